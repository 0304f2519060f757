//! `tollgate dev` secrets: generated on first start and kept in the data dir, so a restart
//! keeps the same admin token and the same keys working.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Reads `name` from the data dir, or generates 32 random bytes as hex and stores them
/// readable by the owner only.
pub fn load_or_generate(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = data_dir.join(name);
    if let Ok(existing) = fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    let value = hex::encode(bytes);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{value}")?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_keeps() {
        let dir = std::env::temp_dir().join(format!("tollgate-dev-{}", tollgate_core::ids::new_id()));
        let first = load_or_generate(&dir, "admin-token").unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_generate(&dir, "admin-token").unwrap(), first);
        assert_ne!(load_or_generate(&dir, "key-pepper").unwrap(), first);
        fs::remove_dir_all(&dir).unwrap();
    }
}
