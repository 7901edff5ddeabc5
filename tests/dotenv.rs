//! `.env` read as the app reads it: the same files given to python-dotenv (the pinned
//! release the app would use) and to the sidecar's reader give the same values, for
//! hand-written traps (passwords with `$`, `#`, quotes, `=` and spaces) and for a few
//! hundred generated files. A real sidecar then logs in with a `$` password from `.env`.

mod support;

use std::collections::BTreeMap;

use redis_celery_sidecar::config::dotenv;
use support::{Redis, TempDir, python};

/// The environment both readers see: what `python()` sets, plus `extra`.
fn environment(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("C_FORCE_ROOT", "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// Writes each text to a file, reads them all with python-dotenv and with the sidecar, and
/// asserts the same keys, in the same order, with the same values.
fn compare(texts: &[String], extra: &[(&str, &str)]) {
    let dir = TempDir::new("dotenv");
    let paths: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.path().join(format!("{i}.env"));
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let out = python("dotenv_values.py", &args, extra);
    assert!(
        out.status.success(),
        "python-dotenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&out.stdout).expect("dotenv_values.py JSON");
    assert_eq!(theirs.len(), texts.len(), "python-dotenv read every file");
    let env = environment(extra);
    for (text, theirs) in texts.iter().zip(theirs) {
        let ours = dotenv::resolve(&dotenv::parse(text).entries, |k| env.get(k).cloned());
        let theirs: Vec<(String, Option<String>)> = theirs
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_string)))
            .collect();
        assert_eq!(ours, theirs, "the file was:\n{text:?}");
    }
}

#[test]
fn hand_written_traps_read_as_python_dotenv_reads_them() {
    let files = [
        // The issue's case: a bare $word is kept; ${VAR} is expanded.
        "REDIS_URL=\"redis://user:pa$word99@host:6379/0\"\n",
        "A=1\nB=${A}-${HOME_X}-${MISSING:-dflt}-$A-${A:-x}\nC='${A}'\nD=\"${A}\"\n",
        "PW=p#ss\nPW2=p #comment\nPW3='p #not comment'\nPW4=\"a=b c\"  # trailing\nPW5= #empty\n",
        "export KEY=value\nexport   K2='v 2'\nexport\nexport=5\n",
        "  # comment\n\n\tIND=ented  \nEMPTY=\nQEMPTY=''\nNOVAL\n",
        "ESC=\"tab\\there\\nnew \\\"q\\\" \\\\ \\' \\x41 \\u00e9\"\nSQ='it\\'s \\\\ \\n'\n",
        "MULTI=\"line1\nline2\"\nAFTER=ok\n",
        "BAD=\"unclosed\nNEXT=1\nX='also\nY=2\n",
        "K=\"v\" junk\nGOOD=1\n=novalue\nsp ace=1\nZ=last\n",
        "CRLF=a\r\nB=\"x\r\ny\"\r\nC=c\r",
        "\u{feff}BOM=1\nDUP=first\nDUP=second\nREF=${DUP}\n",
        "'QUOTED KEY'=1\n\"DQ\"=2\nK='a'  # c\nURL=redis://:p%40ss@h:6379/0?ssl_ca_certs=/a b\n",
        "A=$\nB=${\nC=${}\nD=${A\nE=$${A}\nF=${A:b}\nG=${A:-}\nH=${ A }\n",
        "K\nB=${K:-dflt}\nC=${NOPE:-dflt}\n",
        "P1=pa$$word\nP2=\"pa\\$word\"\nP3=pa\\ss\nP4=\"ends with backslash\\\\\"\n",
    ];
    compare(
        &files.map(String::from),
        &[("HOME_X", "/home/x"), ("DUP", "from-env")],
    );
}

/// A small deterministic generator (xorshift), so that a failure is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn generated_files_read_as_python_dotenv_reads_them() {
    let keys = ["A", "B", "PW", "export", "E_1", "'Q K'", "#C", ""];
    let pieces = [
        "a", "Z", "9", " ", "  ", "\t", "#", " #", "=", "'", "\"", "\\", "\\'", "\\\"", "\\n", "$",
        "$A", "${A}", "${PW:-d}", "${", "}", ":-", "\n", "\r\n", "é", "@", "/", "%40", "export ",
    ];
    let mut rng = Rng(0x5eed_2026_1201);
    let mut files = Vec::new();
    for _ in 0..2000 {
        let mut text = String::new();
        for _ in 0..(1 + rng.next() % 6) {
            if rng.next().is_multiple_of(4) {
                text.push_str(rng.pick(&["export ", "  ", "# note ", ""]));
            }
            text.push_str(rng.pick(&keys));
            text.push_str(rng.pick(&["=", " = ", "=", " "]));
            let quote = rng.pick(&["", "", "'", "\""]);
            text.push_str(quote);
            for _ in 0..(rng.next() % 8) {
                text.push_str(rng.pick(&pieces));
            }
            text.push_str(quote);
            text.push_str(rng.pick(&["\n", "\n", " # c\n", "\r\n", ""]));
        }
        files.push(text);
    }
    compare(&files, &[("PW", "env-pw")]);
}

/// The sidecar itself: `.env` in its working directory gives a password with a `$` that
/// logs in, and a variable already in the environment wins over the file; a line
/// python-dotenv would skip (losing the setting on it) exits 2 naming the line, never its
/// value.
#[test]
fn a_dollar_password_from_dotenv_logs_in_and_a_bad_line_is_named() {
    let password = "pa$word99#x";
    let redis = Redis::start(&["--requirepass", password]);
    let dir = TempDir::new("dotenv-run");
    let env_file = dir.path().join(".env");
    let good = format!(
        "# the app's settings\nREDIS_URL=\"redis://default:{}@127.0.0.1:{}/0\"\nSIDECAR_PROBE_INTERVAL=1h\n",
        password.replace('#', "%23"),
        redis.port
    );
    std::fs::write(&env_file, &good).unwrap();
    let out = support::command(&[("SIDECAR_CELERY_MIN_WORKERS", "0")], dir.path())
        .args(["check", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["checks"]["redis:cache"]["status"], "healthy", "{doc:#}");

    let out = support::command(&[("SIDECAR_PROBE_INTERVAL", "7s")], dir.path())
        .arg("config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("probe interval     7s"), "{text}");
    assert!(!text.contains(password), "{text}");
    // As load_dotenv does, PYTHON_DOTENV_DISABLED turns the file off.
    let out = support::command(&[("PYTHON_DOTENV_DISABLED", "True")], dir.path())
        .arg("config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("probe interval     5s"), "{text}");
    assert!(text.contains("probing the local default"), "{text}");

    std::fs::write(&env_file, format!("{good}\nBROKEN=\"s3cret-value\" tail\n")).unwrap();
    let out = support::command(&[], dir.path())
        .arg("config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("configuration error: .env line 5: a quoted value must end its line"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-value") && !err.contains(password),
        "{err}"
    );
}
