//! A deterministic `cpio` archive in the "newc" format (magic `070701`): what the Linux kernel
//! unpacks as an initramfs, and what an EIF's ramdisk sections hold.
//!
//! Nothing of the machine that writes it gets in: entries are sorted by path (bytes), owned by
//! uid/gid 0, their modes are the ones given (never a file's on disk), every mtime is the one
//! given (`SOURCE_DATE_EPOCH`), inode numbers count from 1 in path order, and the device fields
//! are zero. The same entries and mtime therefore always give the same bytes.
//!
//! Layout (the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`): per entry a
//! 110-byte ASCII header (`070701` and thirteen 8-digit uppercase hex fields), the NUL-terminated
//! name, zero padding to a multiple of 4, the data, zero padding to a multiple of 4; then the
//! entry `TRAILER!!!`.

use std::fmt;

/// The newc magic (no checksum).
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the last entry.
pub const TRAILER: &str = "TRAILER!!!";
/// Header size: the magic and thirteen 8-character fields.
pub const HEADER_LEN: usize = 6 + 13 * 8;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// A malformed entry list or archive; one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioError(pub String);

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpio: {}", self.0)
    }
}

impl std::error::Error for CpioError {}

fn err<T>(reason: impl Into<String>) -> Result<T, CpioError> {
    Err(CpioError(reason.into()))
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A character device node (`/dev/console` is 5:1).
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One entry to write: a relative path (`etc/cosigner/enclave.toml`), permission bits, a kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, relative, `/`-separated, no `.` or `..` components.
    pub path: String,
    /// Permission bits (`0o755`); the file type comes from `kind`.
    pub permissions: u32,
    /// Directory, file or device.
    pub kind: Kind,
}

impl Entry {
    /// A directory.
    pub fn directory(path: &str, permissions: u32) -> Self {
        Self {
            path: path.to_owned(),
            permissions,
            kind: Kind::Directory,
        }
    }

    /// A regular file.
    pub fn file(path: &str, permissions: u32, data: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            permissions,
            kind: Kind::File(data),
        }
    }

    /// A character device node.
    pub fn char_device(path: &str, permissions: u32, major: u32, minor: u32) -> Self {
        Self {
            path: path.to_owned(),
            permissions,
            kind: Kind::CharDevice { major, minor },
        }
    }

    fn mode(&self) -> u32 {
        let kind = match self.kind {
            Kind::Directory => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::CharDevice { .. } => S_IFCHR,
        };
        kind | self.permissions
    }
}

fn check_path(path: &str) -> Result<(), CpioError> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return err(format!(
            "entry {path:?}: paths are relative, non-empty, without a trailing /"
        ));
    }
    if path == TRAILER {
        return err(format!("entry {path:?}: reserved name"));
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return err(format!("entry {path:?}: empty, . or .. component"));
        }
    }
    if path.bytes().any(|b| b == 0) {
        return err(format!("entry {path:?}: NUL in path"));
    }
    Ok(())
}

fn field(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(format!("{value:08X}").as_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn write_header(out: &mut Vec<u8>, h: &Header, name: &str) -> Result<(), CpioError> {
    let namesize = u32::try_from(name.len() + 1).or_else(|_| err("name too long"))?;
    out.extend_from_slice(MAGIC);
    for value in [
        h.ino,
        h.mode,
        0, /* uid */
        0, /* gid */
        h.nlink,
        h.mtime,
        h.filesize,
        0, /* devmajor */
        0, /* devminor */
        h.rdev_major,
        h.rdev_minor,
        namesize,
        0, /* check */
    ] {
        field(out, value);
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

/// Writes the archive. Refused: a bad or duplicate path, an entry whose parent directory is not
/// in the list (the kernel does not create parents), permission bits beyond `0o7777`, a file of
/// 4 GiB or more (newc sizes are 32-bit).
pub fn write(entries: &[Entry], mtime: u32) -> Result<Vec<u8>, CpioError> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut directories = std::collections::BTreeSet::new();
    let mut previous: Option<&str> = None;
    for entry in &sorted {
        check_path(&entry.path)?;
        if previous == Some(entry.path.as_str()) {
            return err(format!("entry {:?} appears twice", entry.path));
        }
        previous = Some(&entry.path);
        if entry.permissions > 0o7777 {
            return err(format!(
                "entry {:?}: permissions {:o} beyond 7777",
                entry.path, entry.permissions
            ));
        }
        if let Some((parent, _)) = entry.path.rsplit_once('/')
            && !directories.contains(parent)
        {
            return err(format!(
                "entry {:?}: its directory {parent:?} is not in the archive",
                entry.path
            ));
        }
        if entry.kind == Kind::Directory {
            directories.insert(entry.path.as_str());
        }
    }

    let mut out = Vec::new();
    for (index, entry) in sorted.iter().enumerate() {
        let ino = u32::try_from(index + 1).or_else(|_| err("too many entries"))?;
        let (nlink, filesize, rdev_major, rdev_minor, data): (u32, u32, u32, u32, &[u8]) =
            match &entry.kind {
                Kind::Directory => (2, 0, 0, 0, &[]),
                Kind::File(data) => {
                    let size = u32::try_from(data.len())
                        .or_else(|_| err(format!("entry {:?}: 4 GiB or larger", entry.path)))?;
                    (1, size, 0, 0, data.as_slice())
                }
                Kind::CharDevice { major, minor } => (1, 0, *major, *minor, &[]),
            };
        let header = Header {
            ino,
            mode: entry.mode(),
            nlink,
            mtime,
            filesize,
            rdev_major,
            rdev_minor,
        };
        write_header(&mut out, &header, &entry.path)?;
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        mtime: 0,
        filesize: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    write_header(&mut out, &trailer, TRAILER)?;
    Ok(out)
}

/// One entry as read back, every header field kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Name (without the NUL).
    pub path: String,
    /// Inode number.
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Device of a device node: (major, minor).
    pub rdev: (u32, u32),
    /// The file's bytes (empty for anything else).
    pub data: Vec<u8>,
}

impl ReadEntry {
    /// Is it a directory?
    pub fn is_directory(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// Is it a regular file?
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// Is it a character device?
    pub fn is_char_device(&self) -> bool {
        self.mode & S_IFMT == S_IFCHR
    }

    /// The permission bits.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], CpioError> {
    let end = at
        .checked_add(n)
        .ok_or_else(|| CpioError("offset overflow".into()))?;
    let slice = bytes
        .get(*at..end)
        .ok_or_else(|| CpioError(format!("truncated at offset {at}")))?;
    *at = end;
    Ok(slice)
}

fn skip_padding(bytes: &[u8], at: &mut usize) -> Result<(), CpioError> {
    let padding = (4 - *at % 4) % 4;
    let pad = take(bytes, at, padding)?;
    if pad.iter().any(|&b| b != 0) {
        return err(format!("non-zero padding before offset {at}"));
    }
    Ok(())
}

fn hex_field(raw: &[u8]) -> Result<u32, CpioError> {
    let text = std::str::from_utf8(raw).or_else(|_| err("header field is not ASCII"))?;
    u32::from_str_radix(text, 16).or_else(|_| err(format!("header field {text:?} is not hex")))
}

/// Reads a newc archive up to its trailer; anything after the trailer must be zero padding.
pub fn read(bytes: &[u8]) -> Result<Vec<ReadEntry>, CpioError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let start = at;
        let header = take(bytes, &mut at, HEADER_LEN)?;
        let (magic, fields) = header.split_at(MAGIC.len());
        if magic != MAGIC {
            return err(format!("bad magic at offset {start}"));
        }
        let mut values = [0u32; 13];
        for (value, raw) in values.iter_mut().zip(fields.chunks(8)) {
            *value = hex_field(raw)?;
        }
        let [
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            _devmajor,
            _devminor,
            rdev_major,
            rdev_minor,
            namesize,
            _check,
        ] = values;
        let namesize = usize::try_from(namesize).or_else(|_| err("name size"))?;
        if namesize == 0 {
            return err(format!("empty name at offset {start}"));
        }
        let raw_name = take(bytes, &mut at, namesize)?;
        let (name, nul) = raw_name.split_at(namesize - 1);
        if nul != [0] || name.contains(&0) {
            return err(format!("name at offset {start} is not NUL-terminated"));
        }
        let path = std::str::from_utf8(name)
            .or_else(|_| err(format!("name at offset {start} is not UTF-8")))?
            .to_owned();
        skip_padding(bytes, &mut at)?;
        let size = usize::try_from(filesize).or_else(|_| err("file size"))?;
        let data = take(bytes, &mut at, size)?.to_vec();
        skip_padding(bytes, &mut at)?;
        if path == TRAILER {
            let rest = bytes.get(at..).unwrap_or_default();
            if rest.iter().any(|&b| b != 0) {
                return err("data after the trailer");
            }
            return Ok(entries);
        }
        entries.push(ReadEntry {
            path,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            rdev: (rdev_major, rdev_minor),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("init", 0o755, b"#!init".to_vec()),
            Entry::directory("etc", 0o755),
            Entry::file("etc/a/b.toml", 0o644, b"x = 1\n".to_vec()),
            Entry::directory("etc/a", 0o755),
            Entry::directory("dev", 0o755),
            Entry::char_device("dev/console", 0o600, 5, 1),
        ]
    }

    #[test]
    fn one_file_is_byte_exact() {
        let bytes = write(&[Entry::file("a", 0o644, b"hi".to_vec())], 0x5f5e_1000).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(
            b"070701\
              00000001\
              000081A4\
              00000000\
              00000000\
              00000001\
              5F5E1000\
              00000002\
              00000000\
              00000000\
              00000000\
              00000000\
              00000002\
              00000000\
              a\0",
        );
        expected.extend_from_slice(b"hi\0\0");
        expected.extend_from_slice(
            b"070701\
              00000000\
              00000000\
              00000000\
              00000000\
              00000001\
              00000000\
              00000000\
              00000000\
              00000000\
              00000000\
              00000000\
              0000000B\
              00000000\
              TRAILER!!!\0",
        );
        // 110 + 11 = 121: padded to 124.
        expected.extend_from_slice(&[0, 0, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn order_of_the_input_does_not_matter() {
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(write(&sample(), 7).unwrap(), write(&reversed, 7).unwrap());
    }

    #[test]
    fn round_trips_with_sorted_paths_sequential_inodes_and_fixed_owner() {
        let bytes = write(&sample(), 1_700_000_000).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read(&bytes).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["dev", "dev/console", "etc", "etc/a", "etc/a/b.toml", "init"]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000));
        }
        assert!(entries[0].is_directory() && entries[0].nlink == 2);
        assert!(entries[1].is_char_device());
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[1].permissions(), 0o600);
        assert!(entries[4].is_file());
        assert_eq!(entries[4].data, b"x = 1\n");
        assert_eq!(entries[5].permissions(), 0o755);
    }

    #[test]
    fn refuses_bad_entry_lists() {
        for (entries, needle) in [
            (vec![Entry::file("/abs", 0o644, vec![])], "relative"),
            (vec![Entry::file("a/../b", 0o644, vec![])], ". or .."),
            (vec![Entry::file("a//b", 0o644, vec![])], "empty"),
            (vec![Entry::file("dir/", 0o644, vec![])], "trailing"),
            (
                vec![Entry::file("orphan/x", 0o644, vec![])],
                "not in the archive",
            ),
            (
                vec![
                    Entry::file("twice", 0o644, vec![]),
                    Entry::file("twice", 0o600, vec![]),
                ],
                "twice",
            ),
            (vec![Entry::file("m", 0o10000, vec![])], "permissions"),
            (vec![Entry::file(TRAILER, 0o644, vec![])], "reserved"),
            (
                vec![
                    Entry::file("notadir", 0o644, vec![]),
                    Entry::file("notadir/x", 0o644, vec![]),
                ],
                "not in the archive",
            ),
        ] {
            let e = write(&entries, 0).unwrap_err();
            assert!(e.0.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn reader_refuses_damage_without_panicking() {
        let good = write(&sample(), 0).unwrap();
        for cut in [0, 5, 50, 110, 200, good.len() - 1] {
            assert!(read(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_magic = good.clone();
        bad_magic[5] = b'2';
        assert!(read(&bad_magic).unwrap_err().0.contains("magic"));
        let mut bad_hex = good.clone();
        bad_hex[7] = b'G';
        assert!(read(&bad_hex).unwrap_err().0.contains("hex"));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        assert!(read(&trailing).unwrap_err().0.contains("after the trailer"));
        let mut zero_padded = good;
        zero_padded.extend_from_slice(&[0; 512]);
        assert_eq!(read(&zero_padded).unwrap().len(), 6);
        // Every single-byte corruption either still parses or is refused, never panics.
        let base = write(&sample(), 0).unwrap();
        for i in 0..base.len() {
            let mut damaged = base.clone();
            damaged[i] ^= 0xff;
            let _ = read(&damaged);
        }
    }
}
