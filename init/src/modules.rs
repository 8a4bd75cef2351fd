//! Loading the kernel modules the image ships, with `finit_module(2)`, in the order
//! `keelson_contract::kmod` gives.

use std::path::Path;

use keelson_contract::kmod::{module_name, ModuleIndex};

/// Loads every module listed in `<modules_dir>/modules.dep` that is not loaded yet.
/// Returns the names loaded now; failures are logged and loading goes on, because a missing
/// optional driver should not stop the boot (a missing disk driver shows up later as a
/// partition that never appears, with its own clear message).
pub fn load_all(modules_dir: &Path) -> Vec<String> {
    let index_path = modules_dir.join("modules.dep");
    let index = match std::fs::read_to_string(&index_path) {
        Ok(text) => ModuleIndex::parse(&text),
        Err(error) => {
            crate::warning!(
                "cannot read {}: {error}; loading no modules",
                index_path.display()
            );
            return Vec::new();
        }
    };
    let mut loaded = Vec::new();
    for module in index.load_order() {
        let name = module_name(&module);
        if Path::new("/sys/module").join(&name).exists() {
            continue;
        }
        match load_one(&modules_dir.join(&module)) {
            Ok(()) => loaded.push(name),
            Err(error) => crate::warning!("loading module {name} ({module}) failed: {error}"),
        }
    }
    loaded
}

fn load_one(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}
