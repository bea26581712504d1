//! The configuration loader: `atb::config::Config::from_toml` and
//! `Config::validate` (which reads no files).
//!
//! Invariants: no panic, however deep or odd the TOML; a validated
//! configuration that serialises back to TOML parses and validates again.
#![no_main]

use atb::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    if let Ok(again) = toml::to_string(&config) {
        let back = Config::from_toml(&again)
            .unwrap_or_else(|e| panic!("re-serialised config does not parse: {e}\n{again}"));
        back.validate()
            .unwrap_or_else(|e| panic!("re-serialised config does not validate: {e}\n{again}"));
    }
});
