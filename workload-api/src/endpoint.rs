//! The Workload API endpoint address, as given in `SPIFFE_ENDPOINT_SOCKET`.
//!
//! Implements the address forms of the SPIFFE Workload Endpoint standard: `unix:///abs/path`
//! (also `unix:/abs/path`) and `tcp://IP:port` with an IP literal and a port, nothing else.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

/// The environment variable holding the Workload API address.
pub const ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Where the Workload API listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket at an absolute path.
    Unix(PathBuf),
    /// A TCP address given as an IP literal and port.
    Tcp(SocketAddr),
}

/// Why an endpoint address was rejected. Every message names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// `SPIFFE_ENDPOINT_SOCKET` is unset or not valid UTF-8.
    #[error("environment variable `{ENDPOINT_SOCKET_ENV}` is not set")]
    NotSet,
    /// The address is empty.
    #[error("workload api endpoint is empty")]
    Empty,
    /// The scheme is missing or is neither `unix` nor `tcp`.
    #[error("workload api endpoint `{input}` must start with `unix:` or `tcp://`")]
    UnsupportedScheme {
        /// The rejected address.
        input: String,
    },
    /// The address has a query (`?...`).
    #[error("workload api endpoint `{input}` must not have a query")]
    Query {
        /// The rejected address.
        input: String,
    },
    /// The address has a fragment (`#...`).
    #[error("workload api endpoint `{input}` must not have a fragment")]
    Fragment {
        /// The rejected address.
        input: String,
    },
    /// The address has user information (`user@`).
    #[error("workload api endpoint `{input}` must not have user information")]
    UserInfo {
        /// The rejected address.
        input: String,
    },
    /// A `unix` address names a host.
    #[error("unix endpoint `{input}` must not have a host; use `unix:///absolute/path`")]
    UnixHost {
        /// The rejected address.
        input: String,
    },
    /// A `unix` address has no absolute path.
    #[error("unix endpoint `{input}` must have an absolute path")]
    UnixPath {
        /// The rejected address.
        input: String,
    },
    /// A `tcp` address lacks the `//` before its host.
    #[error("tcp endpoint `{input}` must have the form `tcp://IP:port`")]
    TcpForm {
        /// The rejected address.
        input: String,
    },
    /// A `tcp` address has a path.
    #[error("tcp endpoint `{input}` must not have a path")]
    TcpPath {
        /// The rejected address.
        input: String,
    },
    /// A `tcp` address has no port.
    #[error("tcp endpoint `{input}` must have a port")]
    TcpPort {
        /// The rejected address.
        input: String,
    },
    /// A `tcp` address has a port that is not a number between 1 and 65535.
    #[error("tcp endpoint `{input}` has an invalid port")]
    TcpInvalidPort {
        /// The rejected address.
        input: String,
    },
    /// A `tcp` address has a host that is not an IP literal.
    #[error("tcp endpoint `{input}` must use an IP address, not a host name")]
    TcpHost {
        /// The rejected address.
        input: String,
    },
}

impl Endpoint {
    /// Parses an endpoint address.
    ///
    /// # Errors
    ///
    /// An [`EndpointError`] naming what is wrong and the input.
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        if input.is_empty() {
            return Err(EndpointError::Empty);
        }
        let owned = || input.to_owned();
        let (scheme, rest) = input
            .split_once(':')
            .ok_or_else(|| EndpointError::UnsupportedScheme { input: owned() })?;
        if rest.contains('?') {
            return Err(EndpointError::Query { input: owned() });
        }
        if rest.contains('#') {
            return Err(EndpointError::Fragment { input: owned() });
        }

        if scheme.eq_ignore_ascii_case("unix") {
            let path = match rest.strip_prefix("//") {
                Some(after) => {
                    let (authority, path) =
                        after.find('/').map_or((after, ""), |i| after.split_at(i));
                    if authority.contains('@') {
                        return Err(EndpointError::UserInfo { input: owned() });
                    }
                    if !authority.is_empty() {
                        return Err(EndpointError::UnixHost { input: owned() });
                    }
                    path
                }
                None => rest,
            };
            if !path.starts_with('/') || path.len() < 2 {
                return Err(EndpointError::UnixPath { input: owned() });
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if scheme.eq_ignore_ascii_case("tcp") {
            let after = rest
                .strip_prefix("//")
                .ok_or_else(|| EndpointError::TcpForm { input: owned() })?;
            let (authority, path) = after.find('/').map_or((after, ""), |i| after.split_at(i));
            if !path.is_empty() {
                return Err(EndpointError::TcpPath { input: owned() });
            }
            if authority.contains('@') {
                return Err(EndpointError::UserInfo { input: owned() });
            }
            parse_ip_port(authority, input).map(Self::Tcp)
        } else {
            Err(EndpointError::UnsupportedScheme { input: owned() })
        }
    }

    /// Reads and parses `SPIFFE_ENDPOINT_SOCKET`.
    ///
    /// # Errors
    ///
    /// [`EndpointError::NotSet`] when the variable is absent, or any parse error.
    pub fn from_env() -> Result<Self, EndpointError> {
        let value = std::env::var(ENDPOINT_SOCKET_ENV).map_err(|_| EndpointError::NotSet)?;
        Self::parse(&value)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

fn parse_ip_port(authority: &str, input: &str) -> Result<SocketAddr, EndpointError> {
    let owned = || input.to_owned();
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| EndpointError::TcpHost { input: owned() })?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| EndpointError::TcpPort { input: owned() })?;
        (host, port)
    } else {
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::TcpPort { input: owned() })?;
        // An unbracketed IPv6 address has several colons; it cannot carry a port.
        if host.contains(':') {
            return Err(EndpointError::TcpHost { input: owned() });
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(EndpointError::TcpPort { input: owned() });
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| EndpointError::TcpInvalidPort { input: owned() })?;
    let ip = host
        .parse::<IpAddr>()
        .map_err(|_| EndpointError::TcpHost { input: owned() })?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_addresses_parse_to_the_expected_endpoint() {
        let cases: &[(&str, Endpoint)] = &[
            (
                "unix:///run/agent/api.sock",
                Endpoint::Unix("/run/agent/api.sock".into()),
            ),
            (
                "unix:/run/agent/api.sock",
                Endpoint::Unix("/run/agent/api.sock".into()),
            ),
            ("UNIX:///tmp/a", Endpoint::Unix("/tmp/a".into())),
            (
                "tcp://127.0.0.1:8081",
                Endpoint::Tcp("127.0.0.1:8081".parse().unwrap()),
            ),
            (
                "tcp://[::1]:8081",
                Endpoint::Tcp("[::1]:8081".parse().unwrap()),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&Endpoint::parse(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn rejected_addresses_name_the_problem_and_the_input() {
        use EndpointError as E;
        let i = String::new;
        let cases: &[(&str, EndpointError)] = &[
            ("", E::Empty),
            ("/run/api.sock", E::UnsupportedScheme { input: i() }),
            ("http://127.0.0.1:80", E::UnsupportedScheme { input: i() }),
            ("unix://host/run/api.sock", E::UnixHost { input: i() }),
            ("unix://user@/run/api.sock", E::UserInfo { input: i() }),
            ("unix:relative/api.sock", E::UnixPath { input: i() }),
            ("unix://", E::UnixPath { input: i() }),
            ("unix:///", E::UnixPath { input: i() }),
            ("unix:///a?x=1", E::Query { input: i() }),
            ("unix:///a#frag", E::Fragment { input: i() }),
            ("tcp:127.0.0.1:80", E::TcpForm { input: i() }),
            ("tcp://127.0.0.1", E::TcpPort { input: i() }),
            ("tcp://127.0.0.1:", E::TcpPort { input: i() }),
            ("tcp://[::1]", E::TcpPort { input: i() }),
            ("tcp://127.0.0.1:http", E::TcpInvalidPort { input: i() }),
            ("tcp://127.0.0.1:0", E::TcpInvalidPort { input: i() }),
            ("tcp://127.0.0.1:70000", E::TcpInvalidPort { input: i() }),
            ("tcp://localhost:80", E::TcpHost { input: i() }),
            ("tcp://::1:80", E::TcpHost { input: i() }),
            ("tcp://127.0.0.1:80/path", E::TcpPath { input: i() }),
            ("tcp://127.0.0.1:80/", E::TcpPath { input: i() }),
            ("tcp://u:p@127.0.0.1:80", E::UserInfo { input: i() }),
            ("tcp://127.0.0.1:80?q", E::Query { input: i() }),
            ("tcp://127.0.0.1:80#f", E::Fragment { input: i() }),
        ];
        for (input, expected) in cases {
            let error = Endpoint::parse(input).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&error),
                std::mem::discriminant(expected),
                "{input}: {error:?}"
            );
            if !input.is_empty() {
                assert!(error.to_string().contains(input), "{input}: {error}");
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for input in ["unix:///run/a.sock", "tcp://10.0.0.1:9", "tcp://[::1]:9"] {
            let endpoint = Endpoint::parse(input).unwrap();
            assert_eq!(endpoint.to_string(), input);
            assert_eq!(Endpoint::parse(&endpoint.to_string()).unwrap(), endpoint);
        }
    }
}
