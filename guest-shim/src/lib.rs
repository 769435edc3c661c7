//! `cachet-guest`: link it into a Rust test built for `wasm32-wasip1`
//! (`use cachet_guest as _;`) and every `std::env::var("X")` asks the host for
//! `X` alone, so cachet logs `env X` instead of the whole environment. The test
//! result is then reused when an unrelated variable changes.
//!
//! It works by defining the C symbol `getenv`, which the linker prefers over
//! wasi-libc's archive member; Rust's std reads variables through `getenv`.
//! Once the program has changed its environment (`setenv`, `std::env::set_var`)
//! or listed it (`std::env::vars`), wasi-libc's `environ` is initialised and
//! this `getenv` reads it, as libc would: the host has then logged `environ`.
//!
//! Without this crate a guest still works; its reads are logged as `environ`.
//! On targets other than WASI the crate is empty.

pub mod abi;

#[cfg(target_os = "wasi")]
mod shim {
    use super::abi;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::ffi::{c_char, CStr, CString};

    #[link(wasm_import_module = "cachet")]
    extern "C" {
        #[link_name = "getenv"]
        fn host_getenv(name_ptr: *const u8, name_len: usize, buf: *mut u8, buf_len: usize) -> i32;
    }

    extern "C" {
        // wasi-libc's environment array; `(char **)-1` until something makes
        // libc read the environment (libc-bottom-half/sources/environ.c).
        static __wasilibc_environ: *mut *mut c_char;
    }

    thread_local! {
        // getenv must return a pointer that stays valid; a name's value cannot
        // change while libc's environ is uninitialised, so each value is
        // fetched once and kept for the life of the program. A BTreeMap, not a
        // HashMap: RandomState would call random_get and log `uses random`.
        static VALUES: RefCell<BTreeMap<Vec<u8>, Option<CString>>> = const { RefCell::new(BTreeMap::new()) };
    }

    fn environ_initialised() -> bool {
        // SAFETY: reading a pointer-sized static that libc initialises statically.
        unsafe { __wasilibc_environ as isize != -1 }
    }

    fn scan_environ(name: &[u8]) -> *mut c_char {
        // SAFETY: once initialised, environ is a NULL-terminated array of
        // NUL-terminated "NAME=VALUE" strings owned by libc.
        unsafe {
            let mut p = __wasilibc_environ;
            if p.is_null() {
                return std::ptr::null_mut();
            }
            while !(*p).is_null() {
                let entry = CStr::from_ptr(*p).to_bytes();
                if entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'='
                {
                    return (*p).add(name.len() + 1);
                }
                p = p.add(1);
            }
        }
        std::ptr::null_mut()
    }

    fn fetch(name: &[u8]) -> Option<CString> {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: both ranges are valid for the given lengths.
            let n = unsafe { host_getenv(name.as_ptr(), name.len(), buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                return None;
            }
            let n = n as usize;
            if n <= buf.len() {
                buf.truncate(n);
                return CString::new(buf).ok();
            }
            buf.resize(n, 0);
        }
    }

    /// # Safety
    /// `name` must be a valid NUL-terminated string, as C's `getenv` requires.
    #[no_mangle]
    pub unsafe extern "C" fn getenv(name: *const c_char) -> *mut c_char {
        if name.is_null() {
            return std::ptr::null_mut();
        }
        let name = CStr::from_ptr(name).to_bytes();
        if name.is_empty() || name.contains(&b'=') {
            return std::ptr::null_mut();
        }
        if environ_initialised() {
            return scan_environ(name);
        }
        VALUES.with(|values| {
            let mut values = values.borrow_mut();
            let value = values.entry(name.to_vec()).or_insert_with(|| fetch(name));
            match value {
                Some(v) => v.as_ptr() as *mut c_char,
                None => std::ptr::null_mut(),
            }
        })
    }

    // Keep the constants honest: the import above spells them out because
    // `link_name` needs a literal.
    const _: () = assert!(abi::GETENV_UNSET < 0 && abi::GETENV_FAULT < 0);
}
