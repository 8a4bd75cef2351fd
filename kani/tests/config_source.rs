//! The choice of configuration source (`keelson_config::acquire::choose`).

use keelson_config::acquire::{choose, Probe, SourceKind};

/// Instance ids drawn from a small set, so that equal and different ids both occur.
fn instance(id: Option<u8>) -> Option<String> {
    id.map(|id| format!("i-{}", id % 3))
}

/// The rule, stated as properties of the outcome rather than as a second copy of the
/// implementation:
/// 1. the chosen source was found;
/// 2. a saved copy wins unless a re-apply is asked for or a seed names another instance;
/// 3. a seed that names another instance than the saved copy in play replaces it;
/// 4. with a re-apply, the saved copy is never chosen;
/// 5. among fresh sources, fw_cfg beats NoCloud beats a URL: a source is only chosen when
///    no source before it was found;
/// 6. nothing is chosen only when nothing usable was found.
fn check(probe: &Probe) {
    let chosen = choose(probe);
    let context = format!("{chosen:?} chosen for {probe:?}");
    let found = |kind: SourceKind| match kind {
        SourceKind::Saved => probe.saved.is_some(),
        SourceKind::FwCfg => probe.fw_cfg,
        SourceKind::NoCloud => probe.nocloud.is_some(),
        SourceKind::Url => probe.url,
        SourceKind::None | SourceKind::Api => false,
    };
    let seed_names_another_instance = matches!(
        (&probe.saved, &probe.nocloud),
        (Some(saved), Some(Some(seed))) if saved.as_ref() != Some(seed)
    );
    let saved_in_play = probe.saved.is_some() && !probe.reapply;
    // 1
    assert!(chosen == SourceKind::None || found(chosen), "{context}");
    assert_ne!(chosen, SourceKind::Api, "{context}");
    // 2
    if saved_in_play && !seed_names_another_instance {
        assert_eq!(chosen, SourceKind::Saved, "{context}");
    }
    // 3
    if saved_in_play && seed_names_another_instance {
        assert_eq!(chosen, SourceKind::NoCloud, "{context}");
    }
    // 4
    if probe.reapply {
        assert_ne!(chosen, SourceKind::Saved, "{context}");
    }
    // 5
    let fresh_order = [SourceKind::FwCfg, SourceKind::NoCloud, SourceKind::Url];
    if let Some(position) = fresh_order.iter().position(|&kind| kind == chosen) {
        if !(saved_in_play && seed_names_another_instance) {
            for &earlier in &fresh_order[..position] {
                assert!(
                    !found(earlier),
                    "{context}: {earlier:?} was found and comes first"
                );
            }
        }
    }
    // 6
    if chosen == SourceKind::None {
        assert!(!saved_in_play, "{context}");
        for kind in fresh_order {
            assert!(!found(kind), "{context}: {kind:?} was found");
        }
    }
}

/// Named cases a person would check by hand.
#[test]
fn the_usual_first_and_later_boots() {
    let probe =
        |saved: Option<Option<&str>>, reapply, fw_cfg, nocloud: Option<Option<&str>>, url| Probe {
            saved: saved.map(|id| id.map(str::to_owned)),
            reapply,
            fw_cfg,
            nocloud: nocloud.map(|id| id.map(str::to_owned)),
            url,
        };
    let cases = [
        (
            "first boot in QEMU",
            probe(None, false, true, None, false),
            SourceKind::FwCfg,
        ),
        (
            "first boot on a cloud",
            probe(None, false, false, Some(Some("i-1")), false),
            SourceKind::NoCloud,
        ),
        (
            "first boot from a URL",
            probe(None, false, false, None, true),
            SourceKind::Url,
        ),
        (
            "nothing at all",
            probe(None, false, false, None, false),
            SourceKind::None,
        ),
        (
            "later boot, same instance",
            probe(Some(Some("i-1")), false, true, Some(Some("i-1")), true),
            SourceKind::Saved,
        ),
        (
            "later boot, seed without an id",
            probe(Some(Some("i-1")), false, false, Some(None), false),
            SourceKind::Saved,
        ),
        (
            "the disk moved to a new instance",
            probe(Some(Some("i-1")), false, true, Some(Some("i-2")), false),
            SourceKind::NoCloud,
        ),
        (
            "keelson.config.reapply with fw_cfg",
            probe(Some(None), true, true, Some(None), true),
            SourceKind::FwCfg,
        ),
        (
            "keelson.config.reapply with nothing new",
            probe(Some(None), true, false, None, false),
            SourceKind::None,
        ),
    ];
    for (name, probe, expected) in cases {
        assert_eq!(choose(&probe), expected, "{name}: {probe:?}");
        check(&probe);
    }
}

/// The rule holds for sampled (bolero) or all (Kani) probes.
#[test]
#[cfg_attr(kani, kani::proof)]
fn the_source_is_found_and_follows_the_order() {
    bolero::check!()
        .with_type::<(Option<Option<u8>>, bool, bool, Option<Option<u8>>, bool)>()
        .for_each(|&(saved, reapply, fw_cfg, nocloud, url)| {
            check(&Probe {
                saved: saved.map(instance),
                reapply,
                fw_cfg,
                nocloud: nocloud.map(instance),
                url,
            });
        });
}

/// The same rule over every combination of a small domain, without sampling:
/// 4 saved states x 2 x 2 x 4 seed states x 2 = 128 probes.
#[test]
fn the_source_rule_holds_for_every_small_probe() {
    let instances = [None, Some(None), Some(Some(0u8)), Some(Some(1u8))];
    for saved in instances {
        for reapply in [false, true] {
            for fw_cfg in [false, true] {
                for nocloud in instances {
                    for url in [false, true] {
                        check(&Probe {
                            saved: saved.map(instance),
                            reapply,
                            fw_cfg,
                            nocloud: nocloud.map(instance),
                            url,
                        });
                    }
                }
            }
        }
    }
}
