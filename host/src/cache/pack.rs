//! Local packs: the bundles a remote cache gave for a module, kept in one
//! entry per module (`packs/<H(module digest)>`) instead of a log and a
//! result file per case. A machine with an empty cache then writes one
//! file per module it got from the remote, not two per case: file creation
//! was most of such a run.
//!
//! A bundle is used exactly as a remote one is: a result only when one of
//! its logs re-observes to the same inputs here. The pack is a second place
//! to look after the case's own entries, which a local run writes and which
//! win. Packs are read at most once per run, changed in memory, and written
//! back (whole, atomically) by [`Packs::flush`]; two processes writing the
//! same pack at once lose one's additions, which costs a later miss only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cachet_runtime::Sha256Digest;

use super::entry::{merge, Bundle, EntryError, Pack};
use super::{Store, TestKey};

const PACKS: &str = "packs";

#[derive(Default)]
struct LocalPack {
    bundles: HashMap<TestKey, Arc<Bundle>>,
    dirty: bool,
}

/// The packs of this run, by module digest (hex).
#[derive(Clone, Default)]
pub struct Packs {
    loaded: Arc<Mutex<HashMap<String, LocalPack>>>,
}

fn entry_key(module: &str) -> Sha256Digest {
    Sha256Digest::of(format!("cachet local pack\n{module}").as_bytes())
}

impl Packs {
    /// The bundle of `key` in `module`'s pack, if it has one. A damaged pack
    /// file is an error (a warning for the caller) and counts as empty.
    pub fn bundle(
        &self,
        store: &Store,
        module: &str,
        key: &TestKey,
    ) -> Result<Option<Arc<Bundle>>, EntryError> {
        let loaded = self.load(store, module);
        let packs = self.loaded.lock().expect("packs");
        let found = packs.get(module).and_then(|p| p.bundles.get(key).cloned());
        loaded.map(|()| found)
    }

    /// Reads `module`'s pack from the store unless this run has it; the
    /// file is parsed outside the lock.
    fn load(&self, store: &Store, module: &str) -> Result<(), EntryError> {
        if self.loaded.lock().expect("packs").contains_key(module) {
            return Ok(());
        }
        let (pack, result) = match store.get(PACKS, &entry_key(module)) {
            Ok(None) => (Pack::default(), Ok(())),
            Ok(Some(bytes)) => match serde_json::from_slice::<Pack>(&bytes) {
                Ok(p) => (p, Ok(())),
                Err(e) => (
                    Pack::default(),
                    Err(EntryError::Parse {
                        entry: format!("{PACKS} of module {module}"),
                        error: e.to_string(),
                    }),
                ),
            },
            Err(e) => (Pack::default(), Err(e.into())),
        };
        let bundles = pack
            .bundles
            .into_iter()
            // A bundle is valid only for the module it is filed under.
            .filter(|b| b.parts.module == module)
            .map(|b| (b.parts.key(), Arc::new(b)))
            .collect();
        self.loaded
            .lock()
            .expect("packs")
            .entry(module.to_string())
            .or_insert(LocalPack {
                bundles,
                dirty: false,
            });
        result
    }

    /// Adds `bundle`'s entries (`key`: its parts' key) to its module's pack (ahead of those it held
    /// for other input states), to be written by [`Packs::flush`].
    pub fn add(&self, store: &Store, key: TestKey, bundle: &Bundle) {
        let module = &bundle.parts.module;
        let _ = self.load(store, module);
        let mut packs = self.loaded.lock().expect("packs");
        let pack = packs.entry(module.clone()).or_default();
        let merged = match pack.bundles.get(&key) {
            Some(old) => {
                let merged = merge(&bundle.entries, &old.entries);
                if merged == old.entries {
                    return;
                }
                merged
            }
            None => merge(&bundle.entries, &[]),
        };
        pack.bundles.insert(
            key,
            Arc::new(Bundle {
                parts: bundle.parts.clone(),
                entries: merged,
            }),
        );
        pack.dirty = true;
    }

    /// Writes the changed packs of `modules` (all of them when `None`).
    /// Errors only cost a later fetch.
    pub fn flush(&self, store: &Store, modules: Option<&[String]>) {
        let changed: Vec<(String, Pack)> = {
            let mut packs = self.loaded.lock().expect("packs");
            packs
                .iter_mut()
                .filter(|(m, p)| p.dirty && modules.is_none_or(|ms| ms.contains(m)))
                .map(|(m, p)| {
                    p.dirty = false;
                    let mut bundles: Vec<Bundle> =
                        p.bundles.values().map(|b| (**b).clone()).collect();
                    bundles.sort_by(|a, b| a.parts.case.cmp(&b.parts.case));
                    (m.clone(), Pack { bundles })
                })
                .collect()
        };
        for (module, pack) in changed {
            if let Ok(bytes) = serde_json::to_vec(&pack) {
                let _ = store.put(PACKS, &entry_key(&module), &bytes);
            }
        }
    }
}
