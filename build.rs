//! Compiles the Sparkplug B payload (proto/sparkplug_b.proto) for the
//! Sparkplug host with prost-build; protox parses the .proto, so no
//! `protoc` is needed. tagstream's own wire types are generated in the SDK
//! crate (clients/rust), which this crate shares.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sparkplug_b.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
