//! The shared test helpers themselves (tests/common): a wait returns what
//! it waited for, and its failure says what was awaited and what was last
//! seen; flags split as `kvlab up` gets them; a seed can be replayed.

mod common;

use common::{always, eventually, millis, secs, test_seed, wait, Seen};

fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("it should have failed");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn eventually_returns_what_the_probe_found() {
    let mut polls = 0;
    let found = eventually("the third poll", secs(5), || {
        polls += 1;
        (polls >= 3).then_some(polls)
    });
    assert_eq!(found, 3);
    let mut polls = 0;
    eventually("a true", secs(5), || {
        polls += 1;
        polls == 2
    });
    assert_eq!(polls, 2);
}

#[test]
fn a_timeout_names_what_was_awaited_and_what_was_last_seen() {
    let message = panic_message(|| {
        let mut n = 0;
        wait("the answer", millis(200))
            .every(millis(10))
            .until(|| -> Result<(), _> {
                n += 1;
                Err(Seen((41, n > 1)))
            });
    });
    assert!(message.contains("waiting for the answer"), "{message}");
    assert!(message.contains("last seen: (41, true)"), "{message}");
    assert!(message.contains("200ms"), "{message}");
}

#[test]
fn try_until_gives_up_quietly() {
    let got = wait("nothing", millis(50))
        .every(millis(10))
        .try_until(|| None::<u8>);
    assert_eq!(got, None);
}

#[test]
fn always_fails_as_soon_as_the_check_stops_holding() {
    let mut polls = 0;
    always("a steady value", millis(100), millis(10), || {
        polls += 1;
        true
    });
    assert!(polls >= 5, "{polls}");
    let message = panic_message(|| {
        let mut polls = 0;
        always("under three", secs(5), millis(1), || {
            polls += 1;
            if polls < 3 {
                Ok(())
            } else {
                Err(format!("{polls} polls"))
            }
        })
    });
    assert!(
        message.contains("under three stopped holding: 3 polls"),
        "{message}"
    );
}

#[test]
fn the_seed_is_the_fallback_unless_overridden() {
    // The only test here that reads or sets the variable.
    std::env::remove_var("KVLAB_TEST_SEED");
    assert_eq!(test_seed("a test", 7), 7);
    std::env::set_var("KVLAB_TEST_SEED", "12345");
    assert_eq!(test_seed("a test", 7), 12345);
    std::env::remove_var("KVLAB_TEST_SEED");
}

#[test]
fn flag_sets_are_whole_flags() {
    for flags in [
        common::FAST_1_1_1,
        common::FAST_2_1_1,
        common::FAST_2_2_2,
        common::FAST_3_2_2,
        common::DEMO_3_2_2,
        common::FAST_IN_MEMORY,
    ] {
        assert!(flags.starts_with("--"), "{flags}");
        assert_eq!(
            flags.split_whitespace().collect::<Vec<_>>().join(" "),
            flags
        );
    }
}
