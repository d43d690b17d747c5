//! The config loader on arbitrary text: it must answer Ok or a ConfigError,
//! never panic (every problem reported, lines found, values substituted).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = tagstream::config::Config::parse(text)
    {
        let _ = e.to_string();
    }
});
