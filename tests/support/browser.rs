//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which scripts/test installs): a small client for what the status page tests need.
//! chromedriver runs in its own process group with its temporary files in a directory of
//! ours; the session is deleted and the group killed on drop.

use super::*;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Option<Child>,
    port: u16,
    session: String,
    /// The browser's process, killed too should the session not end cleanly.
    browser_pid: Option<u64>,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Browser {
    /// A headless session, with page scripts on or off, logging the console and every
    /// network request.
    pub fn start(javascript: bool) -> Browser {
        use std::os::unix::process::CommandExt;
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: scripts/test installs Debian's {package} package"
            );
        }
        let dir = TempDir::new("chromium");
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TMPDIR", dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let logs = capture(&mut driver);
        let mut browser = Browser {
            driver: Some(driver),
            port,
            session: String::new(),
            browser_pid: None,
            logs,
            _dir: dir,
        };
        wait_for("chromedriver to listen", Duration::from_secs(20), || {
            browser
                .request("GET", "/status", None)
                .ok()
                .filter(|v| v["value"]["ready"] == true)
        });
        let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", browser._dir.path().join("profile").display()),
            ],
        });
        if !javascript {
            options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
            }}})),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_string();
        browser.browser_pid = created["capabilities"]["goog:processID"].as_u64();
        browser
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> std::io::Result<Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        // chromedriver says `Connection: close` but keeps the socket open: read the head,
        // then exactly Content-Length bytes.
        let mut reader = BufReader::new(s);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let rest = String::from_utf8_lossy(&body);
        serde_json::from_str(&rest)
            .map_err(|e| std::io::Error::other(format!("not JSON ({e}): {rest}")))
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let reply = self
            .request(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}\n{}", self.driver_logs()));
        let value = reply["value"].clone();
        if let Some(error) = value.get("error") {
            panic!(
                "WebDriver {method} {path}: {error}: {}",
                value["message"].as_str().unwrap_or("")
            );
        }
        value
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn driver_logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({"url": url})));
    }

    pub fn title(&self) -> String {
        self.session_call("GET", "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered text of the first element matching `css` (WebDriver's own, which works
    /// with page scripts off).
    pub fn text(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found[ELEMENT].as_str().expect("an element reference");
        self.session_call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered texts of every element matching `css`.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let found = self.session_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let id = e[ELEMENT].as_str().expect("an element reference");
                self.session_call("GET", &format!("/element/{id}/text"), None)
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// Runs `script` (WebDriver's, allowed even when the page's own scripts are off).
    pub fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// A PNG of the whole page (beyond the window), saved at `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let shot = self.session_call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Page.captureScreenshot",
                        "params": {"format": "png", "captureBeyondViewport": true}})),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The console's entries since the last call (`level`, `message`, `source`).
    pub fn console(&self) -> Vec<Value> {
        self.session_call("POST", "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every request made since the last call: the URL of the document that made it, and
    /// the URL requested (the browser's own pages make requests too).
    pub fn requests(&self) -> Vec<(String, String)> {
        let entries = self.session_call("POST", "/se/log", Some(json!({"type": "performance"})));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| serde_json::from_str::<Value>(e["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .filter_map(|m| {
                let params = &m["message"]["params"];
                Some((
                    params["documentURL"].as_str()?.to_string(),
                    params["request"]["url"].as_str()?.to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let ended = !self.session.is_empty()
            && self
                .request("DELETE", &format!("/session/{}", self.session), None)
                .is_ok();
        // Only when the session did not end: the browser's pid is then still its own.
        if !ended && let Some(pid) = self.browser_pid {
            kill("KILL", &pid.to_string());
        }
        if let Some(mut c) = self.driver.take() {
            kill("KILL", &format!("-{}", c.id()));
            let _ = c.wait();
        }
    }
}
