//! The node config's `[metrics]` table: where the metrics go (a textfile for node_exporter, a
//! listener for Prometheus), read and checked with the rest of the config.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::model::error::{Error, Result};

/// The node config's `[metrics]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Rewritten atomically after every fetch cycle and run, for node_exporter's textfile collector.
    pub textfile: Option<PathBuf>,
    /// Where the daemon serves `GET /metrics`.
    pub listen: Option<SocketAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    textfile: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
}

impl Settings {
    pub(crate) fn parse(raw: RawSettings, err: impl Fn(Range<usize>, String) -> Error) -> Result<Settings> {
        let textfile = match raw.textfile {
            None => None,
            Some(v) => {
                let path = PathBuf::from(v.get_ref());
                // node_exporter reads only `*.prom` files, and a relative path would depend on
                // the cwd of whichever process writes it.
                if !path.is_absolute() || path.extension().is_none_or(|e| e != "prom") {
                    return Err(err(
                        v.span(),
                        format!(
                            "`metrics.textfile`: {:?} must be an absolute path ending in .prom \
                             (node_exporter reads only those)",
                            v.get_ref()
                        ),
                    ));
                }
                Some(path)
            }
        };
        let listen = match raw.listen {
            None => None,
            Some(v) => Some(v.get_ref().parse::<SocketAddr>().map_err(|e| {
                err(
                    v.span(),
                    format!("`metrics.listen`: {:?}: {e} (expected e.g. \"127.0.0.1:9469\")", v.get_ref()),
                )
            })?),
        };
        Ok(Settings { textfile, listen })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(text: &str) -> Result<Settings> {
        Ok(crate::model::config::Config::parse(Path::new("/etc/troops/troops.toml"), text)?.metrics)
    }

    #[test]
    fn settings_parse_and_bad_values_name_their_key_and_line() {
        let s = settings(
            "[metrics]\ntextfile = \"/var/lib/node-exporter/troops.prom\"\nlisten = \"127.0.0.1:9469\"\n",
        )
        .unwrap();
        assert_eq!(s.textfile.as_deref(), Some(Path::new("/var/lib/node-exporter/troops.prom")));
        assert_eq!(s.listen, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(settings("").unwrap(), Settings::default());
        let e = settings("[metrics]\nlisten = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/troops/troops.toml:2:10: `metrics.listen`: \"localhost\""), "{e}");
        let e = settings("[metrics]\ntextfile = \"troops.prom\"\n").unwrap_err().to_string();
        assert!(e.contains(":2:12: `metrics.textfile`"), "{e}");
        let e = settings("[metrics]\ntextfile = \"/tmp/troops.txt\"\n").unwrap_err().to_string();
        assert!(e.contains("ending in .prom"), "{e}");
        let e = settings("[metrics]\nport = 9469\n").unwrap_err().to_string();
        assert!(e.contains(":2:1: ") && e.contains("port"), "{e}");
    }
}
