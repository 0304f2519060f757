//! Certificates for TLS tests, made with the `openssl` command: a CA, a server certificate it
//! signed for `localhost` and `127.0.0.1`, and a second CA that signed nothing here (what a
//! client that must refuse the server trusts).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA, a server certificate and key, and an unrelated CA, in a temporary directory.
#[derive(Debug)]
pub struct TestCertificates {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("openssl").current_dir(dir).args(args).output().map_err(|e| format!("openssl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr)))
    }
}

impl TestCertificates {
    /// Makes them, or returns `None` (skip; a failure under `CI=true`) without `openssl`.
    pub fn make() -> Option<Self> {
        match Self::try_make() {
            Ok(certificates) => Some(certificates),
            Err(error) => {
                crate::unavailable("openssl", error);
                None
            }
        }
    }

    fn try_make() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path();
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        for (name, subject) in [("ca", "/CN=Tollgate test CA"), ("other-ca", "/CN=Another CA")] {
            let (keyout, out) = (format!("{name}.key"), format!("{name}.pem"));
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject, "-keyout", &keyout, "-out", &out];
            args.extend(key);
            openssl(path, &args)?;
        }
        let mut args = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
        args.extend(key);
        openssl(path, &args)?;
        std::fs::write(path.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            .map_err(|e| e.to_string())?;
        openssl(
            path,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
        )?;
        Ok(Self {
            ca: path.join("ca.pem"),
            cert: path.join("server.pem"),
            key: path.join("server.key"),
            other_ca: path.join("other-ca.pem"),
            dir,
        })
    }

    /// Lets a private Postgres, which runs as `postgres` when the tests run as root, read the
    /// server key, which it wants private to it (mode 0600).
    pub fn readable_by_postgres(&self) {
        if crate::running_as_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(self.dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the certificates to postgres");
        }
        let status = Command::new("chmod").arg("600").arg(&self.key).status();
        assert!(status.is_ok_and(|s| s.success()), "chmod the server key");
    }
}
