//! Compiles the wire contract with prost-build; protox parses the .proto so no
//! `protoc` binary is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tagstream/v1/tagstream.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
