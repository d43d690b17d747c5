//! OPC UA StatusCodes: the wire's codes and names live in the SDK
//! (`tagstream_client::status`), so server and clients name them alike.

pub use tagstream_client::status::*;
