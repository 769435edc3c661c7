//! Directory listings in cachet's order. The stock `fd_readdir` gives the
//! host file system's order (hash order on ext4, newest first on tmpfs),
//! which the input log does not record: the log holds a listing as a sorted
//! set, so a cached result could show one order while a fresh run shows
//! another. cachet reads the whole listing the stock way, into host memory,
//! and gives the guest `.` and `..` and then the entries bytewise by name,
//! with cookies that index that order. What the log records is then
//! exactly what the guest saw. The listing read at cookie 0 serves the
//! calls that continue it (`RunState::listing`), until the fd is closed or
//! renumbered or the guest starts over.

/// `wasi_snapshot_preview1`'s `dirent`: `d_next` u64, `d_ino` u64,
/// `d_namlen` u32, `d_type` u8, padding to 24 bytes; the name follows.
pub(crate) const DIRENT_SIZE: usize = 24;

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dirent {
    pub ino: u64,
    pub kind: u8,
    pub name: Vec<u8>,
}

/// The entries of a stock `fd_readdir` answer read from cookie 0 (`bytes`
/// is the part it used); `None` if it is cut short.
pub(crate) fn parse(bytes: &[u8]) -> Option<Vec<Dirent>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + DIRENT_SIZE)?;
        let ino = u64::from_le_bytes(head[8..16].try_into().ok()?);
        let namlen = u32::from_le_bytes(head[16..20].try_into().ok()?) as usize;
        let name = bytes.get(at + DIRENT_SIZE..at + DIRENT_SIZE + namlen)?;
        entries.push(Dirent {
            ino,
            kind: head[20],
            name: name.to_vec(),
        });
        at += DIRENT_SIZE + namlen;
    }
    Some(entries)
}

/// cachet's order: `.` and `..` first (as the stock listing has them),
/// then bytewise by name.
pub(crate) fn sort(entries: &mut [Dirent]) {
    entries.sort_by(|a, b| {
        let rank = |d: &Dirent| match d.name.as_slice() {
            b"." => 0,
            b".." => 1,
            _ => 2,
        };
        rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name))
    });
}

/// Writes `entries` from `cookie` on into `out` as the stock call does:
/// whole entries while they fit, then as much of the next as fits (the
/// guest sees a full buffer and asks again from that entry's cookie).
/// Returns the bytes used.
pub(crate) fn encode(entries: &[Dirent], cookie: u64, out: &mut [u8]) -> usize {
    let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
    let mut used = 0;
    for (i, d) in entries.iter().enumerate().skip(skip) {
        let mut entry = Vec::with_capacity(DIRENT_SIZE + d.name.len());
        entry.extend_from_slice(&(i as u64 + 1).to_le_bytes());
        entry.extend_from_slice(&d.ino.to_le_bytes());
        entry.extend_from_slice(&(d.name.len() as u32).to_le_bytes());
        entry.extend_from_slice(&[d.kind, 0, 0, 0]);
        entry.extend_from_slice(&d.name);
        let n = entry.len().min(out.len() - used);
        out[used..used + n].copy_from_slice(&entry[..n]);
        used += n;
        if used == out.len() {
            break;
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str) -> Dirent {
        Dirent {
            ino: name.len() as u64,
            kind: 4,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn dot_entries_first_then_bytewise() {
        let mut e = vec![d("b"), d(".."), d("B"), d("a.txt"), d("."), d("a")];
        sort(&mut e);
        let names: Vec<_> = e.iter().map(|d| String::from_utf8_lossy(&d.name)).collect();
        assert_eq!(names, [".", "..", "B", "a", "a.txt", "b"]);
    }

    #[test]
    fn encoding_round_trips_and_cuts_like_the_stock_call() {
        let e = vec![d("."), d(".."), d("alpha"), d("b")];
        let mut out = vec![0u8; 1024];
        let used = encode(&e, 0, &mut out);
        assert_eq!(used, 4 * DIRENT_SIZE + 1 + 2 + 5 + 1);
        assert_eq!(parse(&out[..used]), Some(e.clone()));
        // From a cookie: the entries after it, d_next counting on.
        let used = encode(&e, 2, &mut out);
        assert_eq!(parse(&out[..used]), Some(e[2..].to_vec()));
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 3);
        // A small buffer is filled to the last byte: a part of an entry.
        let mut small = vec![0u8; DIRENT_SIZE + 10];
        assert_eq!(encode(&e, 0, &mut small), small.len());
        assert_eq!(parse(&small), None, "cut short");
        // Past the end: nothing.
        assert_eq!(encode(&e, 9, &mut out), 0);
    }
}
