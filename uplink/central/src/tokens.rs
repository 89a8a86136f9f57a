//! The token file of central: which bearer token may write which track.

use std::collections::HashMap;
use std::path::Path;

use uplink::Error;

/// Bearer token → track id. A token is scoped to exactly one track (INGEST.md).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, String>,
}

impl Tokens {
    /// Reads `<track_id> <token>` lines; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = uplink::tls::read_file(path, "tokens")?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::Config(format!("{} is not UTF-8", path.display())))?;
        Self::parse(&text).map_err(|line| {
            Error::Config(format!(
                "{} line {line}: expected `<track_id> <token>`, each at least one character",
                path.display()
            ))
        })
    }

    /// Parses the token file; on error, the 1-based line that is wrong.
    pub fn parse(text: &str) -> Result<Self, usize> {
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(track), Some(token), None) => {
                    by_token.insert(token.to_owned(), track.to_owned());
                }
                _ => return Err(n + 1),
            }
        }
        Ok(Self { by_token })
    }

    pub fn track_of(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_comments() {
        let t = Tokens::parse("# tracks\nbmx-main s3cret\n\n  kart-2  t0ken # the kart track\n")
            .unwrap();
        assert_eq!(t.track_of("s3cret"), Some("bmx-main"));
        assert_eq!(t.track_of("t0ken"), Some("kart-2"));
        assert_eq!(t.track_of("nope"), None);
        assert_eq!(Tokens::parse("ok tok\nbad\n").unwrap_err(), 2);
    }
}
