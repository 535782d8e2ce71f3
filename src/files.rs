//! Files on disk, safely: a safetensors file is read header first, in bounded memory, so a
//! foreign or damaged file is refused before the rest of it is read; a file is written by
//! atomic replacement, so a crash at any moment leaves the old file or the new one, whole.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest safetensors header read (its JSON: names, shapes, metadata): far below the
/// format's own 100 MB limit and far above any trajectory's or checkpoint's.
pub(crate) const MAX_HEADER_BYTES: u64 = 1 << 24;

/// The bytes of the safetensors file at `path`. The 8-byte length and the header are read and
/// checked first: a header past [`MAX_HEADER_BYTES`] or the file, or a file whose size is not
/// the one its header describes, is refused with `bad(message)` before the data is read. A
/// pipe or a device (no size to check against) is read as it comes.
pub(crate) fn read_safetensors(path: &Path, bad: impl Fn(String) -> Error) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        return Ok(bytes);
    }
    let len = metadata.len();
    let short = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(format!("not a safetensors file: {len} bytes")),
        _ => io(e),
    };
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(short)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES || header_len > len.saturating_sub(8) {
        return Err(bad(format!(
            "not a safetensors file: a header of {header_len} bytes in a file of {len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(short)?;
    let data = data_bytes(&header).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let described = (8 + header_len).checked_add(data);
    if described != Some(len) {
        return Err(bad(format!(
            "the file is {len} bytes but its header describes {}",
            described.map_or("more than 2^64".into(), |d| d.to_string())
        )));
    }
    let mut bytes = prefix.to_vec();
    bytes.append(&mut header);
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Bytes of tensor data a safetensors header describes: the end of its last tensor.
fn data_bytes(header: &[u8]) -> std::result::Result<u64, String> {
    let json: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let map = json.as_object().ok_or("the header is not a JSON object")?;
    let mut end = 0u64;
    for (name, tensor) in map.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = tensor
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("tensor `{name}` has no data offsets"))?;
        end = end.max(offsets);
    }
    Ok(end)
}

/// Replaces the file at `path` with what `write` writes, atomically: the bytes go to a
/// temporary file in the same folder, which is flushed and synced to the disk, renamed over
/// `path`, and the folder is synced so the rename itself survives a power loss. Until the
/// rename the old file is untouched; if anything fails, the temporary file is removed and the
/// old file stays.
pub fn write_atomic(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let io = |what: &Path, source| Error::Io {
        path: what.display().to_string(),
        source,
    };
    let name = path.file_name().ok_or_else(|| Error::InvalidSetting {
        what: "file name".into(),
        message: format!("{} names no file", path.display()),
    })?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Unique per process and call, so that two writers never share a temporary file.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.{call}.tmp", std::process::id()));
    let temp = folder.join(temp_name);
    let result = (|| {
        let mut file = File::create_new(&temp).map_err(|e| io(&temp, e))?;
        let mut buffered = std::io::BufWriter::new(&mut file);
        write(&mut buffered).map_err(|e| io(&temp, e))?;
        buffered.flush().map_err(|e| io(&temp, e))?;
        drop(buffered);
        file.sync_all().map_err(|e| io(&temp, e))?;
        drop(file);
        std::fs::rename(&temp, path).map_err(|e| io(path, e))
    })();
    if result.is_err() {
        // The old file was never touched; only the partial new one goes.
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    sync_folder(folder).map_err(|e| io(folder, e))
}

/// Syncs a folder's entries (a rename in it) to the disk, where the system allows opening a
/// folder; elsewhere the rename is as durable as the system makes it.
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(folder)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = folder;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fusedopt-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_that_fails_midway_leaves_the_old_file_and_no_temporary() {
        let dir = folder("fail");
        let path = dir.join("state.bin");
        write_atomic(&path, |w| w.write_all(b"old, whole")).unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(&[7u8; 100_000])?;
            Err(std::io::Error::other("disk full (injected)"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old, whole");
        assert_eq!(entries(&dir), ["state.bin"]);
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(entries(&dir), ["state.bin"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_or_folder_is_an_error() {
        assert!(write_atomic("/", |_| Ok(())).is_err());
        let missing = std::env::temp_dir().join("fusedopt-no-such-folder/x/state.bin");
        assert!(matches!(
            write_atomic(missing, |_| Ok(())),
            Err(Error::Io { .. })
        ));
    }
}
