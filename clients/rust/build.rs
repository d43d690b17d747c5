//! Compiles the wire contract (the workspace's `proto/`) with prost-build;
//! protox parses the .proto, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    let proto = format!("{root}/tagstream/v1/tagstream.proto");
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto.as_str()], [root])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
