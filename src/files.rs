//! Files on disk, safely: a safetensors file is read header first, in bounded memory, so a
//! foreign or damaged file is refused before the rest of it is read; a file is written by
//! atomic replacement, so a crash at any moment leaves the old file or the new one, whole.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest safetensors header read or written (its JSON: names, shapes, metadata): the
/// safetensors format's own limit, which a model of tens of thousands of tensors approaches.
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The bytes of the safetensors file at `path`. The 8-byte length and the header are read and
/// checked first: a header past [`MAX_HEADER_BYTES`], or data past what the file holds, is
/// refused with `bad(message)` before the data is read, so memory stays bounded by what the
/// header describes (a pipe or a device is read no further than that either).
pub(crate) fn read_safetensors(path: &Path, bad: impl Fn(String) -> Error) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    // A regular file's size must be the one its header describes; a stream has none to check.
    let len = metadata.is_file().then_some(metadata.len());
    let size = len.map_or("a stream".to_string(), |l| format!("{l} bytes"));
    let short = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            bad(format!("not a safetensors file: {size}, cut short"))
        }
        _ => io(e),
    };
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(short)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES || len.is_some_and(|l| header_len > l.saturating_sub(8)) {
        return Err(bad(format!(
            "not a safetensors file: a header of {header_len} bytes in {size}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(short)?;
    let data = data_bytes(&header).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let described = (8 + header_len).checked_add(data);
    if let Some(len) = len
        && described != Some(len)
    {
        return Err(bad(format!(
            "the file is {len} bytes but its header describes {}",
            described.map_or("more than 2^64".into(), |d| d.to_string())
        )));
    }
    let mut bytes = prefix.to_vec();
    bytes.append(&mut header);
    // At most what the header describes, and no more than arrives.
    let mut rest = Vec::new();
    (&mut file).take(data).read_to_end(&mut rest).map_err(io)?;
    if (rest.len() as u64) < data {
        return Err(bad(format!(
            "not a safetensors file: {} bytes of data where the header describes {data}",
            rest.len()
        )));
    }
    bytes.append(&mut rest);
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
/// temporary file in the same folder (a name no other writer uses), which is flushed and
/// synced to the disk, then renamed over `path`, and the folder is synced so that the rename
/// itself survives a power loss. Until the rename the old file is untouched; if anything fails
/// before it, the temporary file is removed and the old file stays. Once renamed, the new file
/// is in place: a folder sync the file system does not support is not an error (the rename is
/// then as durable as that file system makes it); one that fails is.
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
    let (temp, mut file) = create_temporary(folder, name).map_err(|(p, e)| io(&p, e))?;
    let written = (|| {
        let mut buffered = std::io::BufWriter::new(&mut file);
        write(&mut buffered)?;
        buffered.flush()?;
        drop(buffered);
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written {
        // The old file was never touched; only the partial new one goes.
        let _ = std::fs::remove_file(&temp);
        return Err(io(&temp, e));
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(io(path, e));
    }
    match sync_folder(folder) {
        // EINVAL (22): file systems that cannot sync a folder (some FUSE and network mounts).
        Err(e) if e.kind() != std::io::ErrorKind::Unsupported && e.raw_os_error() != Some(22) => {
            Err(io(folder, e))
        }
        _ => Ok(()),
    }
}

/// A new temporary file beside `name` in `folder`, named `.{name}.{pid}.{nanos}.{n}.tmp` so
/// that no two writers share one (a process id repeats across containers and restarts; the
/// clock and a counter tell them apart); a name taken is never opened, and tried again.
fn create_temporary(
    folder: &Path,
    name: &std::ffi::OsStr,
) -> std::result::Result<(std::path::PathBuf, File), (std::path::PathBuf, std::io::Error)> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.{nanos}.{call}.tmp", std::process::id()));
        let temp = folder.join(temp_name);
        match File::create_new(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err((temp, e)),
        }
    }
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
    fn another_writers_temporary_file_is_left_alone() {
        let dir = folder("other");
        let path = dir.join("state.bin");
        // What a killed writer (of this very process id, after a restart) left behind.
        let stale = dir.join(format!(".state.bin.{}.0.0.tmp", std::process::id()));
        std::fs::write(&stale, b"partial").unwrap();
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read(&stale).unwrap(), b"partial");
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
