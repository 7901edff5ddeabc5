//! The status page in a real browser: headless Chromium (Debian's, installed by
//! scripts/test) against the sidecar watching a real password-protected Redis and a real
//! Celery 5.7 worker. Three states: healthy, Redis killed (the real cause on the page and in
//! the timeline), Redis back (the incident kept). Each is saved as a screenshot under
//! `target/browser/`. Also: a queue named `<script>alert(1)</script>` shows as text, the
//! page makes no request beyond the sidecar and no console error, it reads the same with
//! scripts off, and a browser logs in with the token as a Basic password.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{Browser, FAST, Redis, Sidecar, Worker, send, wait_for};

const PASSWORD: &str = "pw-for-the-page-test";
const TOKEN: &str = "page-token-4711";
const HOSTILE: &str = "<script>alert(1)</script>";

fn shots() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser")
}

fn healthz(sidecar: &Sidecar) -> Value {
    sidecar
        .request(
            "GET",
            "/healthz",
            &format!("Authorization: Bearer {TOKEN}\r\n"),
        )
        .json()
}

/// Polls /healthz until `ok` holds.
fn wait_health(sidecar: &Sidecar, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(what, Duration::from_secs(45), || {
            let h = healthz(sidecar);
            last = h.clone();
            ok(&h).then_some(h)
        })
    }));
    found.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}; last /healthz:\n{last:#}\nlogs:\n{}",
            sidecar.logs()
        )
    })
}

/// Loads the page (logged in with the token as a Basic password) and checks what any
/// state must hold: no console error, no request beyond the sidecar's origin.
fn load(browser: &Browser, sidecar: &Sidecar) {
    let origin = format!("127.0.0.1:{}", sidecar.addr.port());
    browser.console();
    browser.requests();
    browser.goto(&format!("http://admin:{TOKEN}@{origin}/"));
    let errors: Vec<Value> = browser
        .console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let host = |url: &str| {
        url.strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""))
            .map(|authority| authority.rsplit('@').next().unwrap_or("").to_string())
    };
    // What the page's document asked for (the browser's own pages are not the page's).
    let requests: Vec<String> = browser
        .requests()
        .into_iter()
        .filter(|(document, _)| host(document).as_deref() == Some(origin.as_str()))
        .map(|(_, url)| url)
        .collect();
    assert!(
        !requests.is_empty(),
        "the performance log saw no request of the page"
    );
    for url in &requests {
        assert!(
            host(url).as_deref() == Some(origin.as_str()) || url.starts_with("data:"),
            "a request left the sidecar's origin: {url}"
        );
    }
    assert!(
        !browser.title().is_empty(),
        "the page did not load (401?): {:?}",
        browser.texts("body")
    );
}

/// The timeline's rows, each as its cells' text: when, what, change, why.
fn timeline(browser: &Browser) -> Vec<Vec<String>> {
    let rows = browser.script(
        "return [...document.querySelectorAll('.timeline tbody tr')]
            .map(tr => [...tr.cells].map(td => td.textContent))",
    );
    serde_json::from_value(rows).expect("rows of cells")
}

#[test]
fn the_status_page_shows_health_an_outage_and_the_recovery() {
    let mut redis = Redis::start(&["--requirepass", PASSWORD]);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let app = [("BROKER_URL", url.as_str())];
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.retain(|(k, _)| *k != "SIDECAR_CELERY_MIN_WORKERS");
    env.extend([
        ("CELERY_BROKER_URL", url.as_str()),
        ("SIDECAR_AUTH_TOKEN", TOKEN),
        ("SIDECAR_CELERY_MIN_WORKERS", "1"),
    ]);
    let worker = Worker::start(&app, "pageworker@test", &["-E", "-P", "solo"]);
    worker.wait_ready();
    let sidecar = Sidecar::start(&env);
    // Tasks that succeed and fail, and a queue nobody consumes whose name is markup.
    send(
        &app,
        &format!(
            r#"[{{"task": "add", "args": [1, 2]}}, {{"task": "add", "args": [3, 4]}}, {{"task": "boom"}},
                {{"declare": ["{HOSTILE}"]}}, {{"task": "add", "args": [5, 6], "queue": "{HOSTILE}"}}]"#
        ),
    );
    wait_health(&sidecar, "healthy, the worker and the hostile queue", |h| {
        h["status"] == "healthy"
            && h["checks"]["celery"]["workers_alive"] == 1
            && h["checks"]["celery"]["queues"][HOSTILE]["length"] == 1
    });

    // Without the token: refused, with a challenge a browser answers with a login prompt.
    let refused = sidecar.get("/");
    assert_eq!(refused.status, 401);
    assert!(
        refused
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("www-authenticate") && v.starts_with("Basic ")),
        "{:?}",
        refused.headers
    );

    let browser = Browser::start(true);
    // 1. Healthy.
    load(&browser, &sidecar);
    assert!(
        browser.title().starts_with("healthy"),
        "{}",
        browser.title()
    );
    assert_eq!(browser.text("h1"), "✔ healthy");
    let redis_card = browser.text(".card");
    assert!(redis_card.contains("healthy redis:broker"), "{redis_card}");
    assert!(
        redis_card.contains(&format!("redis://:***@127.0.0.1:{}/0", redis.port)),
        "{redis_card}"
    );
    let page = browser.text("body");
    let html = browser.script("return document.documentElement.outerHTML");
    assert!(
        !html.as_str().unwrap().contains(PASSWORD) && !html.as_str().unwrap().contains(TOKEN),
        "a secret is in the page"
    );
    assert!(page.contains("pageworker@test"), "{page}");
    assert!(page.contains("1 worker(s) alive"), "{page}");
    let queues = browser.script(
        "return [...document.querySelectorAll('table')]
            .filter(t => t.caption && t.caption.textContent.startsWith('Queues'))
            .flatMap(t => [...t.querySelectorAll('td.name')].map(td => td.textContent))",
    );
    assert_eq!(
        queues,
        serde_json::json!([HOSTILE, "celery"]),
        "the longest first"
    );
    // The hostile name is a table cell's text, and no script element exists.
    let hostile = browser.script(&format!(
        "return [document.querySelectorAll('script').length,
                 [...document.querySelectorAll('td')].some(td => td.textContent === {HOSTILE:?})]"
    ));
    assert_eq!(hostile, serde_json::json!([0, true]), "{page}");
    // The task counts move with the next queue probe after the events.
    let mut tasks = String::new();
    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            "the page to count the tasks",
            Duration::from_secs(30),
            || {
                load(&browser, &sidecar);
                tasks = browser.text("section:nth-of-type(2)");
                tasks.contains("2 succeeded, 1 failed").then_some(())
            },
        )
    }));
    assert!(counted.is_ok(), "task counts missing: {tasks}");
    browser.screenshot(&shots().join("healthy.png"));

    // 2. Redis killed: unhealthy, the real cause, the change in the timeline.
    redis.kill();
    wait_health(&sidecar, "redis:broker unhealthy", |h| {
        h["checks"]["redis:broker"]["status"] == "unhealthy"
    });
    load(&browser, &sidecar);
    assert_eq!(browser.text("h1"), "✖ unhealthy");
    let refused = format!("connection refused by 127.0.0.1:{}", redis.port);
    let problems = browser
        .script("return [...document.querySelectorAll('.problems li')].map(li => li.textContent)");
    assert!(
        problems.as_array().unwrap().iter().any(|p| {
            let p = p.as_str().unwrap();
            p.starts_with("redis:broker ✖ unhealthy: ") && p.contains(&refused)
        }),
        "{problems:#?}"
    );
    let rows = timeline(&browser);
    assert!(
        rows.iter().any(|r| r[1] == "redis:broker"
            && r[2] == "✔ healthy → ✖ unhealthy"
            && r[3].starts_with("connect ")
            && r[3].contains(&refused)),
        "{rows:#?}"
    );
    browser.screenshot(&shots().join("unhealthy.png"));

    // 3. Redis back: healthy again, the incident still in the timeline.
    redis.restart();
    wait_health(&sidecar, "healthy again, the worker back", |h| {
        h["status"] == "healthy" && h["checks"]["celery"]["workers_alive"] == 1
    });
    load(&browser, &sidecar);
    assert_eq!(browser.text("h1"), "✔ healthy");
    let rows = timeline(&browser);
    let recovered = rows
        .iter()
        .position(|r| r[1] == "redis:broker" && r[2] == "✖ unhealthy → ✔ healthy");
    let failed = rows
        .iter()
        .position(|r| r[1] == "redis:broker" && r[2] == "✔ healthy → ✖ unhealthy");
    assert!(
        matches!((recovered, failed), (Some(r), Some(f)) if r < f),
        "the recovery should be listed above the outage: {rows:#?}"
    );
    browser.screenshot(&shots().join("recovered.png"));
    drop(browser);

    // Scripts off: the same page, the same words.
    let plain = Browser::start(false);
    plain.goto("data:text/html,<title>off</title><script>document.title='on'</script>");
    assert_eq!(
        plain.title(),
        "off",
        "page scripts should be off in this session"
    );
    load(&plain, &sidecar);
    assert_eq!(plain.text("h1"), "✔ healthy");
    assert!(plain.text("body").contains("Timeline"));
    plain.screenshot(&shots().join("no-javascript.png"));
    drop(worker);
}
