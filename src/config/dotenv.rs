//! `.env` read as the app reads it: python-dotenv 1.2's grammar and interpolation, so that a
//! password the app accepts is the password the sidecar sends.
//!
//! What python-dotenv does, and so this does:
//! - the file is UTF-8 (a BOM is dropped) read in universal-newline mode (`\r\n` and `\r`
//!   become `\n` before parsing);
//! - `KEY=VALUE`, an optional `export ` before the key, a key in single quotes, blank lines
//!   and `# comments`; `KEY` alone has no value and sets nothing;
//! - a value in single quotes keeps everything but `\\` and `\'`; in double quotes the
//!   escapes `\\ \' \" \a \b \f \n \r \t \v` are decoded; both may span lines;
//! - an unquoted value ends at the end of the line, loses a ` # comment` (a `#` after
//!   whitespace) and its trailing whitespace; `KEY=#x` keeps the `#`;
//! - `${NAME}` and `${NAME:-default}` are replaced in every value (quoted or not) by the
//!   environment, else an earlier line of the file, else the default or nothing; a bare
//!   `$NAME` is kept as written;
//! - a line it cannot parse is skipped by python-dotenv (it logs "could not parse statement
//!   starting at line N" and goes on, the setting on it lost); the sidecar refuses the file
//!   instead, naming the line and what is wrong, never the value, so that the lost setting
//!   is found.
//!
//! Variables already in the environment win over the file, as `load_dotenv()` leaves them.

use std::collections::HashMap;

/// One `KEY=VALUE` statement as written (before interpolation); `None` for a bare `KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Option<String>,
    /// The line the statement starts on.
    pub line: usize,
}

/// A statement python-dotenv skips: the line it starts on and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub problem: &'static str,
}

/// A whole file: its statements in order and the lines skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// Python's `str.isspace` (and the regex `\s` in Unicode mode): Rust's whitespace plus the
/// four information separators U+001C..U+001F.
fn space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `[^\S\r\n]`: whitespace that does not end a line.
fn blank(c: char) -> bool {
    space(c) && c != '\n' && c != '\r'
}

struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_while(&mut self, keep: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| keep(c)) {
            self.pos += c.len_utf8();
        }
        &self.text[start..self.pos]
    }

    /// The body of a quoted value (`'((?:\\.|[^'\\])*)'`), the reader past its closing
    /// quote; `None` when it never closes.
    fn quoted(&mut self, quote: char) -> Option<String> {
        let mut chars = self.text[self.pos + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '\\' {
                chars.next()?;
            } else if c == quote {
                let body = self.text[self.pos + 1..self.pos + 1 + i].to_string();
                self.pos += 1 + i + 1;
                return Some(body);
            }
        }
        None
    }
}

/// Reads a whole file's text (see the module doc).
pub fn parse(text: &str) -> Parsed {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut r = Reader {
        text: &text,
        pos: 0,
    };
    let mut parsed = Parsed::default();
    while r.pos < text.len() {
        r.skip_while(space);
        if r.pos >= text.len() {
            break;
        }
        let line = text[..r.pos].matches('\n').count() + 1;
        match statement(&mut r, line) {
            Ok(Some(entry)) => parsed.entries.push(entry),
            Ok(None) => {}
            Err(problem) => {
                parsed.skipped.push(Skipped { line, problem });
                // `[^\r\n]*(?:\r|\n|\r\n)?` from where the statement failed.
                r.skip_while(|c| c != '\n');
                if r.peek() == Some('\n') {
                    r.pos += 1;
                }
            }
        }
    }
    parsed
}

/// One statement from the reader's position (whitespace already skipped): an entry, nothing
/// for a comment line, or why it cannot be read.
fn statement(r: &mut Reader, line: usize) -> Result<Option<Entry>, &'static str> {
    if let Some(after) = r.rest().strip_prefix("export")
        && after.starts_with(blank)
    {
        r.pos += "export".len();
        r.skip_while(blank);
    }
    let key = match r.peek() {
        Some('#') => None,
        Some('\'') => {
            let body = r.rest()[1..].split('\'').next().unwrap_or("");
            if body.is_empty() || r.rest().len() == 1 + body.len() {
                return Err("a key in single quotes must be closed and not empty");
            }
            let key = body.to_string();
            r.pos += key.len() + 2;
            Some(key)
        }
        _ => {
            let key = r.skip_while(|c| c != '=' && c != '#' && !space(c));
            if key.is_empty() {
                return Err("the line has no key before its =");
            }
            Some(key.to_string())
        }
    };
    r.skip_while(blank);
    let value = if r.peek() == Some('=') {
        r.pos += 1;
        let spaced = !r.skip_while(blank).is_empty();
        if spaced && r.peek() == Some('#') {
            Some(String::new())
        } else {
            Some(value(r)?)
        }
    } else {
        None
    };
    // An optional comment, then the end of the line.
    let mark = r.pos;
    r.skip_while(blank);
    if r.peek() == Some('#') {
        r.skip_while(|c| c != '\n');
    } else {
        r.pos = mark;
    }
    r.skip_while(blank);
    match r.peek() {
        None => {}
        Some('\n') => r.pos += 1,
        Some(_) => {
            return Err(match value {
                None => "a key must be followed by = (a key holds no spaces)",
                Some(_) => "a quoted value must end its line: only a # comment may follow it",
            });
        }
    }
    Ok(key.map(|key| Entry { key, value, line }))
}

fn value(r: &mut Reader) -> Result<String, &'static str> {
    match r.peek() {
        Some(q @ ('\'' | '"')) => {
            let body = r.quoted(q).ok_or(if q == '\'' {
                "a value in single quotes is never closed"
            } else {
                "a value in double quotes is never closed"
            })?;
            Ok(unescape(&body, q == '"'))
        }
        None | Some('\n') => Ok(String::new()),
        Some(_) => {
            let part = r.skip_while(|c| c != '\n');
            // `re.sub(r"\s+#.*", "", part).rstrip()`: cut at the first run of whitespace
            // followed by `#`.
            let mut cut = part.len();
            let mut run = None;
            for (i, c) in part.char_indices() {
                if space(c) {
                    run.get_or_insert(i);
                } else {
                    if c == '#'
                        && let Some(start) = run
                    {
                        cut = start;
                        break;
                    }
                    run = None;
                }
            }
            Ok(part[..cut].trim_end_matches(space).to_string())
        }
    }
}

/// The escapes python-dotenv decodes: `\\` and `\'` in single quotes; those and `\"`, `\a`,
/// `\b`, `\f`, `\n`, `\r`, `\t`, `\v` in double quotes. Any other backslash stays.
fn unescape(body: &str, double: bool) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.peek() {
            Some('\\') => Some('\\'),
            Some('\'') => Some('\''),
            Some(d) if double => match d {
                '"' => Some('"'),
                'a' => Some('\u{07}'),
                'b' => Some('\u{08}'),
                'f' => Some('\u{0c}'),
                'n' => Some('\n'),
                'r' => Some('\r'),
                't' => Some('\t'),
                'v' => Some('\u{0b}'),
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some(d) => {
                out.push(d);
                chars.next();
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The values after interpolation, in file order (a key written twice keeps its last
/// value). `env` gives the process environment, which wins over the file's own earlier
/// values, as with `load_dotenv(override=False)`.
pub fn resolve(
    entries: &[Entry],
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, Option<String>)> {
    let mut values: Vec<(String, Option<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for entry in entries {
        // A key of the file without a value stands for "" (its default is not used).
        let resolved = entry.value.as_deref().map(|v| {
            interpolate(v, |name| match env(name) {
                Some(v) => Some(v),
                None => index
                    .get(name)
                    .map(|&i| values[i].1.clone().unwrap_or_default()),
            })
        });
        match index.get(&entry.key) {
            Some(&i) => values[i].1 = resolved,
            None => {
                index.insert(entry.key.clone(), values.len());
                values.push((entry.key.clone(), resolved));
            }
        }
    }
    values
}

/// Replaces `${NAME}` and `${NAME:-default}` (`\$\{([^}:]*)(?::-([^}]*))?\}`).
fn interpolate(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name_len = after.find(['}', ':']).unwrap_or(after.len());
        let name = &after[..name_len];
        let tail = &after[name_len..];
        let matched = if let Some(t) = tail.strip_prefix('}') {
            Some((None, t))
        } else if let Some(d) = tail.strip_prefix(":-") {
            d.find('}').map(|end| (Some(&d[..end]), &d[end + 1..]))
        } else {
            None
        };
        match matched {
            Some((default, t)) => {
                out.push_str(&lookup(name).unwrap_or_else(|| default.unwrap_or("").to_string()));
                rest = t;
            }
            None => {
                out.push('$');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads `path` into the environment: every key the environment does not already hold and
/// that has a value. A missing file (or a directory) is nothing, as for python-dotenv, and
/// so is any file when `PYTHON_DOTENV_DISABLED` is true. An unreadable or non-UTF-8 file,
/// a line python-dotenv would skip, or a setting `os.environ` refuses (a key with `=`, a
/// NUL byte) is an error naming the line and what is wrong on it, never its text.
pub fn load(path: &std::path::Path) -> Result<(), String> {
    if std::env::var("PYTHON_DOTENV_DISABLED")
        .is_ok_and(|v| ["1", "true", "t", "yes", "y"].contains(&v.to_lowercase().as_str()))
    {
        return Ok(());
    }
    if path.is_dir() {
        return Ok(());
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("line {line} is not valid UTF-8 (python-dotenv fails on it: UnicodeDecodeError)")
    })?;
    let parsed = parse(&text);
    if let Some(s) = parsed.skipped.first() {
        return Err(format!(
            "line {}: {} (python-dotenv skips such a line, and the setting on it is lost: fix or remove it)",
            s.line, s.problem
        ));
    }
    let values = resolve(&parsed.entries, |k| std::env::var(k).ok());
    for entry in &parsed.entries {
        let bad_key = entry.key.contains(['=', '\0']);
        let bad_value = values
            .iter()
            .any(|(k, v)| *k == entry.key && v.as_deref().is_some_and(|v| v.contains('\0')));
        if bad_key || bad_value {
            return Err(format!(
                "line {}: {} (the app's load_dotenv fails on it: ValueError)",
                entry.line,
                if bad_key {
                    "a key holds = or a NUL byte, which no environment variable may"
                } else {
                    "the value holds a NUL byte, which no environment variable may"
                }
            ));
        }
    }
    for (key, value) in values {
        if let Some(value) = value
            && std::env::var_os(&key).is_none()
        {
            // SAFETY: called from `main` before any other thread exists.
            unsafe { std::env::set_var(&key, value) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, Option<String>)> {
        resolve(&parse(text).entries, |_| None)
    }

    #[test]
    fn a_bare_dollar_is_kept_and_braces_are_expanded() {
        let v = values("A=1\nREDIS_URL=\"redis://u:pa$word99@h:6379/0\"\nB=${A}x${MISSING:-d}$A\n");
        assert_eq!(v[1].1.as_deref(), Some("redis://u:pa$word99@h:6379/0"));
        assert_eq!(v[2].1.as_deref(), Some("1xd$A"));
    }

    #[test]
    fn skipped_lines_say_where_and_why_without_the_value() {
        let p = parse("A=1\n\n  B=\"s3cret\" tail\nC='open\n=x\nD=2\n");
        assert_eq!(
            p.entries,
            [
                Entry {
                    key: "A".into(),
                    value: Some("1".into()),
                    line: 1
                },
                Entry {
                    key: "D".into(),
                    value: Some("2".into()),
                    line: 6
                }
            ]
        );
        let lines: Vec<usize> = p.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [3, 4, 5]);
        assert!(p.skipped.iter().all(|s| !s.problem.contains("s3cret")));
    }
}
