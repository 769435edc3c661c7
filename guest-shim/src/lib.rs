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
//! It defines `unsetenv` too, which would otherwise load the whole
//! environment to remove one name (libtest's child mode removes the variable
//! that names its test): before the environment is loaded the name is just
//! remembered as unset. A variable removed so comes back if the program
//! later sets another one or lists them all (libc then loads the host's).
//!
//! Without this crate a guest still works; its reads are logged as `environ`.
//! On targets other than WASI preview 1 the crate is empty: a preview 2
//! component can import only WIT interfaces, not the core `cachet` module,
//! so its reads are logged as `environ` (docs/design/sandbox.md, "Preview 2").

pub mod abi;

#[cfg(all(target_os = "wasi", not(target_env = "p2")))]
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

    /// `unsetenv` without reading the whole environment: libc's would load
    /// it all (`environ_get`, logged as `environ`) to remove one name.
    /// libtest's child mode removes `__RUST_TEST_INVOKE` as it starts, so
    /// every test run by cachet would otherwise log the whole environment.
    /// Before libc's `environ` exists, the name is remembered as unset;
    /// after, it is removed from `environ` as libc would.
    ///
    /// # Safety
    /// `name` must be a valid NUL-terminated string, as C's `unsetenv`
    /// requires.
    #[no_mangle]
    pub unsafe extern "C" fn unsetenv(name: *const c_char) -> i32 {
        if name.is_null() {
            return -1;
        }
        let name = CStr::from_ptr(name).to_bytes();
        if name.is_empty() || name.contains(&b'=') {
            return -1;
        }
        if !environ_initialised() {
            VALUES.with(|values| values.borrow_mut().insert(name.to_vec(), None));
            return 0;
        }
        // SAFETY: environ is a NULL-terminated array of NUL-terminated
        // strings owned by libc; entries are only moved down over the
        // removed ones, as musl's unsetenv does.
        let mut read = __wasilibc_environ;
        let mut write = read;
        if read.is_null() {
            return 0;
        }
        while !(*read).is_null() {
            let entry = CStr::from_ptr(*read).to_bytes();
            let named =
                entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'=';
            if !named {
                *write = *read;
                write = write.add(1);
            }
            read = read.add(1);
        }
        *write = std::ptr::null_mut();
        0
    }

    // Keep the constants honest: the import above spells them out because
    // `link_name` needs a literal.
    const _: () = assert!(abi::GETENV_UNSET < 0 && abi::GETENV_FAULT < 0);
}
