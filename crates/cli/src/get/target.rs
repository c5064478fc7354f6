//! Where `get` sends each request and writes each body: URLs parsed with the `url` crate (IPv6
//! literals, percent-encoding, `.`/`..` segments resolved), every URL's path kept under the output
//! directory, and the whole set checked before anything is downloaded: one authority, no path
//! leaving the directory, no two downloads writing the same file (or one's file being the
//! other's directory).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;
use url::Url;

use crate::Failure;

/// The name a URL whose path ends in `/` (or is empty) is saved as, inside that directory.
const INDEX: &str = "index.html";

/// Where the bodies go (`--output`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Under this directory, each at its URL's path.
    Dir(PathBuf),
    /// Standard output, one body after the other in URL order (`--output -`).
    Stdout,
}

impl From<&str> for Output {
    fn from(s: &str) -> Self {
        match s {
            "-" => Self::Stdout,
            dir => Self::Dir(PathBuf::from(dir)),
        }
    }
}

/// The server the URLs name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Authority {
    /// A DNS name, or an IP address without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Authority {
    /// `host:port`, an IPv6 address in brackets (the `:authority` of an h3 request).
    pub(crate) fn to_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One URL to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL as given (for messages).
    pub(crate) url: String,
    /// Path and query as sent, percent-encoded, without the leading `/`.
    pub(crate) request: String,
    /// The decoded path relative to the output directory (never empty, never `..`).
    pub(crate) file: PathBuf,
}

/// Parses one `https://` URL into its authority and [`Target`].
pub(crate) fn parse(url: &str) -> Result<(Authority, Target), Failure> {
    let bad = |why: String| Failure::Usage(format!("{url}: {why}"));
    let u = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if u.scheme() != "https" {
        return Err(bad("not an https:// URL".into()));
    }
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(bad("no host".into())),
    };
    let port = u.port_or_known_default().unwrap_or(443);
    let mut request = u.path().trim_start_matches('/').to_string();
    if let Some(q) = u.query() {
        request.push('?');
        request.push_str(q);
    }
    let file = file_of(u.path()).map_err(bad)?;
    Ok((
        Authority { host, port },
        Target {
            url: url.to_string(),
            request,
            file,
        },
    ))
}

/// The relative file a URL path (percent-encoded, `.`/`..` already resolved by the parser) is
/// saved as; an error names what is wrong with it.
fn file_of(path: &str) -> Result<PathBuf, String> {
    let mut file = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| format!("path segment {segment:?} is not UTF-8 once decoded"))?;
        // an encoded `/` (%2F) would make one segment several: judge each part on its own
        for part in decoded.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err("the path escapes the output directory".into()),
                p if p.contains('\0') => return Err("the path contains a NUL byte".into()),
                p => file.push(p),
            }
        }
    }
    if path.ends_with('/') || file.as_os_str().is_empty() {
        file.push(INDEX);
    }
    Ok(file)
}

/// Parses every URL, checks they share one authority and, for an output directory, that no two
/// of them write the same file or one's file is another's directory.
pub(crate) fn plan(urls: &[String], output: &Output) -> Result<(Authority, Vec<Target>), Failure> {
    let mut authority: Option<Authority> = None;
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        let (a, t) = parse(url)?;
        match &authority {
            Some(first) if *first != a => {
                return Err(Failure::Usage(format!(
                    "{url}: all URLs must have the same host and port ({})",
                    first.to_header()
                )))
            }
            Some(_) => {}
            None => authority = Some(a),
        }
        targets.push(t);
    }
    let authority = authority.ok_or_else(|| Failure::Usage("no URL given".into()))?;
    if let Output::Dir(dir) = output {
        check_distinct(&targets, dir)?;
    }
    Ok((authority, targets))
}

/// No two targets write the same file, and no target's file is a directory another needs.
fn check_distinct(targets: &[Target], dir: &Path) -> Result<(), Failure> {
    let mut files: HashMap<&Path, &str> = HashMap::new();
    for t in targets {
        if let Some(other) = files.insert(&t.file, &t.url) {
            return Err(Failure::Usage(format!(
                "{other} and {} would both be written to {}",
                t.url,
                dir.join(&t.file).display()
            )));
        }
    }
    let dirs: HashSet<&Path> = targets
        .iter()
        .flat_map(|t| t.file.ancestors().skip(1))
        .collect();
    for t in targets {
        if dirs.contains(t.file.as_path()) {
            let inside = targets
                .iter()
                .find(|o| o.file.starts_with(&t.file) && o.file != t.file)
                .map_or("", |o| o.url.as_str());
            return Err(Failure::Usage(format!(
                "{} would be written to {}, which {inside} needs as a directory",
                t.url,
                dir.join(&t.file).display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> (Authority, Target) {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e:?}"))
    }

    #[test]
    fn keeps_the_path_decodes_it_and_drops_the_query() {
        let (a, t) = one("https://localhost:4433/a/b%20c.txt?x=1&y=%2F");
        assert_eq!((a.host.as_str(), a.port), ("localhost", 4433));
        assert_eq!(t.request, "a/b%20c.txt?x=1&y=%2F");
        assert_eq!(t.file, Path::new("a/b c.txt"));
        assert_eq!(one("https://h/").1.file, Path::new(INDEX));
        assert_eq!(one("https://h/d/").1.file, Path::new("d/index.html"));
        assert_eq!(one("https://h").0.port, 443);
    }

    #[test]
    fn ipv6_literals_and_default_port() {
        let (a, _) = one("https://[::1]:4433/x");
        assert_eq!((a.host.as_str(), a.port), ("::1", 4433));
        assert_eq!(a.to_header(), "[::1]:4433");
        assert_eq!(one("https://[2001:db8::1]/x").0.port, 443);
    }

    #[test]
    fn refuses_escapes_and_bad_urls() {
        // `..` segments are resolved by the URL parser and cannot climb above the root...
        assert_eq!(one("https://h/../../etc/p").1.file, Path::new("etc/p"));
        assert_eq!(one("https://h/a/%2e%2e/b").1.file, Path::new("b"));
        // ...but an encoded slash could: refused
        for url in ["https://h/..%2F..%2Fetc%2Fp", "https://h/a%2F..%2F..%2Fx"] {
            assert!(parse(url).is_err(), "{url}");
        }
        assert!(parse("https://h/a%00b").is_err());
        assert!(parse("http://h/x").is_err());
        assert!(parse("https://h:notaport/y").is_err());
        assert!(parse("not a url").is_err());
    }

    #[test]
    fn collisions_are_found_before_downloading() {
        let dir = Output::Dir("out".into());
        let urls = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(plan(&urls(&["https://h/a/n.txt", "https://h/b/n.txt"]), &dir).is_ok());
        for set in [
            &["https://h/a/n.txt", "https://h/a/n.txt?v=2"][..],
            &["https://h/a%20b", "https://h/a b"],
            &["https://h/", "https://h/index.html"],
            &["https://h/a", "https://h/a/b"],
            &["https://h/x/y/z", "https://h/x/y"],
        ] {
            assert!(plan(&urls(set), &dir).is_err(), "{set:?}");
        }
        // standard output keeps each body apart
        assert!(plan(&urls(&["https://h/a", "https://h/a"]), &Output::Stdout).is_ok());
        assert!(plan(&urls(&["https://h/a", "https://g/b"]), &Output::Stdout).is_err());
    }
}
