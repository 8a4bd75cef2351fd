//! Kernel modules as the image builder ships them and PID 1 loads them: the module name
//! the kernel gives a file, and the load order from `modules.dep`.
//!
//! The image ships only the modules Keelson needs, with a `modules.dep` that lists each
//! module's full dependency closure (as depmod writes it). Loading "everything shipped, each
//! after its dependencies" is therefore exactly loading what the system needs.

use std::collections::{BTreeMap, BTreeSet};

/// Parsed `modules.dep`: module path → the paths it depends on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleIndex {
    dependencies: BTreeMap<String, Vec<String>>,
}

impl ModuleIndex {
    /// Parses the text of `modules.dep`. Malformed lines are skipped.
    pub fn parse(text: &str) -> ModuleIndex {
        let dependencies = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(module, deps)| {
                (
                    module.trim().to_owned(),
                    deps.split_ascii_whitespace().map(str::to_owned).collect(),
                )
            })
            .filter(|(module, _): &(String, Vec<String>)| !module.is_empty())
            .collect();
        ModuleIndex { dependencies }
    }

    /// Every module, each listed after all of its dependencies, none twice. A dependency
    /// cycle (which depmod would refuse) is broken rather than looped on.
    pub fn load_order(&self) -> Vec<String> {
        let mut order = Vec::new();
        let mut visited = BTreeSet::new();
        for module in self.dependencies.keys() {
            self.visit(module, &mut visited, &mut order);
        }
        order
    }

    fn visit(&self, module: &str, visited: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !visited.insert(module.to_owned()) {
            return;
        }
        for dependency in self.dependencies.get(module).into_iter().flatten() {
            self.visit(dependency, visited, order);
        }
        order.push(module.to_owned());
    }
}

/// The name the kernel gives a module file: `kernel/drivers/md/dm-verity.ko` → `dm_verity`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
";

    #[test]
    fn every_module_comes_after_its_dependencies() {
        let index = ModuleIndex::parse(SAMPLE);
        let order = index.load_order();
        assert_eq!(order.len(), 7);
        let position = |name: &str| order.iter().position(|m| m.ends_with(name)).unwrap();
        assert!(position("dm-bufio.ko") < position("dm-verity.ko"));
        assert!(position("dm-mod.ko") < position("dm-verity.ko"));
        assert!(position("jbd2.ko") < position("ext4.ko"));
    }

    #[test]
    fn cycles_terminate() {
        let index = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n");
        assert_eq!(index.load_order().len(), 2);
    }

    #[test]
    fn names_follow_the_kernel_convention() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko"), "dm_verity");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
    }

    #[test]
    fn order_is_a_permutation_with_dependencies_first_for_any_input() {
        bolero::check!()
            .with_type::<Vec<(u8, Vec<u8>)>>()
            .for_each(|graph| {
                let text: String = graph
                    .iter()
                    .map(|(module, deps)| {
                        let deps: Vec<String> =
                            deps.iter().map(|d| format!("m{}.ko", d % 8)).collect();
                        format!("m{}.ko: {}\n", module % 8, deps.join(" "))
                    })
                    .collect();
                let index = ModuleIndex::parse(&text);
                let order = index.load_order();
                let unique: BTreeSet<_> = order.iter().collect();
                assert_eq!(unique.len(), order.len());
            });
    }
}
