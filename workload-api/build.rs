//! Compiles `proto/workload.proto` without a system `protoc` and writes the file descriptor set
//! that the server offers through gRPC reflection.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");

    // protox ships google/protobuf/*.proto itself, so only our own include dir is needed.
    let fds = protox::compile(["workload.proto"], ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("workload_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Encode buffers sized to each message, not 8 KiB per call (see src/codec.rs).
        .codec_path("crate::codec::SizedCodec")
        // `bytes` fields as `Bytes`: the provider's SVIDs and bundles are moved into messages
        // without a copy, and every stream sending the same bundle shares one buffer.
        .bytes(".")
        // Secret-bearing messages get hand-written Debug impls that redact.
        .skip_debug(["X509SVID", "JWTSVID", "ValidateJWTSVIDRequest"])
        .compile_fds(fds)?;
    Ok(())
}
