//! Picking kernel modules out of the kernel package and writing their `modules.dep`.
//!
//! The Debian package ships no `modules.dep` (its postinst runs depmod). We read each
//! module's `depends=` from its `.modinfo` ELF section, which modpost computed from the
//! symbols it imports, take the closure of the modules we want, and write `modules.dep` in
//! depmod's format: every line lists the module's whole dependency closure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use object::{Object, ObjectSection};

/// Chosen modules: name → the names it depends on directly.
pub type ModuleSelection = BTreeMap<String, Vec<String>>;

/// The modules of one kernel release, by name.
#[derive(Debug)]
pub struct KernelModules {
    /// `/lib/modules/<release>` inside the unpacked package.
    pub root: PathBuf,
    /// Module name → path relative to `root`.
    pub paths: BTreeMap<String, String>,
    /// Names built into the kernel (from `modules.builtin`).
    pub builtin: BTreeSet<String>,
}

impl KernelModules {
    /// Indexes the modules under `root`.
    pub fn scan(root: &Path) -> anyhow::Result<KernelModules> {
        let mut paths = BTreeMap::new();
        for path in crate::host::files_with_extension(&root.join("kernel"), "ko")? {
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            paths.insert(keelson_contract::kmod::module_name(&relative), relative);
        }
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(keelson_contract::kmod::module_name)
            .collect();
        Ok(KernelModules {
            root: root.to_owned(),
            paths,
            builtin,
        })
    }

    /// The `depends=` of a module, as names.
    fn depends(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let relative = &self.paths[name];
        let bytes = std::fs::read(self.root.join(relative))
            .with_context(|| format!("reading {relative}"))?;
        let file = object::File::parse(&*bytes)
            .with_context(|| format!("{relative} is not an ELF module"))?;
        let section = file
            .section_by_name(".modinfo")
            .with_context(|| format!("{relative} has no .modinfo"))?;
        let data = section.data()?;
        let depends = data
            .split(|&byte| byte == 0)
            .filter_map(|field| field.strip_prefix(b"depends="))
            .flat_map(|list| {
                String::from_utf8_lossy(list)
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|name| !name.is_empty())
            .map(|name| name.replace('-', "_"))
            .collect();
        Ok(depends)
    }

    /// The closure of `wanted` over dependencies, skipping built-in modules. Returns the
    /// names chosen and the wanted names that are built in (for the summary).
    pub fn closure(&self, wanted: &[&str]) -> anyhow::Result<(ModuleSelection, Vec<String>)> {
        let mut chosen = ModuleSelection::new();
        let mut builtin = Vec::new();
        let mut pending: Vec<String> = wanted.iter().map(|name| name.replace('-', "_")).collect();
        while let Some(name) = pending.pop() {
            if chosen.contains_key(&name) {
                continue;
            }
            if !self.paths.contains_key(&name) {
                if self.builtin.contains(&name) {
                    builtin.push(name);
                    continue;
                }
                bail!("kernel module {name} is neither in the kernel package nor built in");
            }
            let depends = self.depends(&name)?;
            pending.extend(depends.iter().cloned());
            chosen.insert(name, depends);
        }
        Ok((chosen, builtin))
    }

    /// `modules.dep` text for `chosen` (from [`KernelModules::closure`]).
    pub fn modules_dep(&self, chosen: &ModuleSelection) -> String {
        let mut text = String::new();
        for name in chosen.keys() {
            let mut closure = Vec::new();
            let mut seen = BTreeSet::new();
            collect_closure(name, chosen, &mut seen, &mut closure);
            let paths: Vec<&str> = closure.iter().map(|dep| self.paths[dep].as_str()).collect();
            text.push_str(
                &format!("{}: {}\n", self.paths[name], paths.join(" ")).replace(": \n", ":\n"),
            );
        }
        text
    }
}

fn collect_closure(
    name: &str,
    chosen: &ModuleSelection,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    for dependency in chosen.get(name).into_iter().flatten() {
        if seen.insert(dependency.clone()) {
            out.push(dependency.clone());
            collect_closure(dependency, chosen, seen, out);
        }
    }
}
