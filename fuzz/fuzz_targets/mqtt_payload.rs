//! MQTT payload decoding for every format and type: a value or a
//! PayloadError, never a panic. The first byte picks the spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagstream::source::mqtt::payload::{Format, PayloadSpec, TagType};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let formats = [Format::Number, Format::Text, Format::Bool, Format::Json];
    let kinds = [
        TagType::F64,
        TagType::I64,
        TagType::U64,
        TagType::Bool,
        TagType::String,
    ];
    let pointers = [None, Some("/value"), Some("/a/0"), Some("")];
    let spec = PayloadSpec {
        format: formats[usize::from(pick) % 4],
        json_pointer: pointers[usize::from(pick >> 2) % 4].map(str::to_string),
        timestamp_pointer: (pick & 0x80 != 0).then(|| "/ts".to_string()),
        kind: kinds[usize::from(pick >> 4) % 5],
    };
    let _ = spec.decode(payload);
});
