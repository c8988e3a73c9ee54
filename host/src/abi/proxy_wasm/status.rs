//! proxy-wasm status codes and enums (ABI 0.2.1).

/// `proxy_status_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// No such thing.
    NotFound = 1,
    /// An argument is out of range or the thing is not available now.
    BadArgument = 2,
    /// A value cannot be given in one piece (a property naming a whole message).
    SerializationFailure = 3,
    /// A name could not be resolved (an unknown gRPC upstream).
    ParseFailure = 4,
    /// A pointer or length lies outside the module's memory.
    InvalidMemoryAccess = 6,
    /// A queue is empty.
    Empty = 7,
    /// A compare-and-swap token did not match.
    CasMismatch = 8,
    /// The host failed.
    InternalFailure = 10,
    /// The host does not implement this.
    Unimplemented = 12,
}

/// Buffer types.
pub mod buffer {
    /// Request body.
    pub const HTTP_REQUEST_BODY: i32 = 0;
    /// Response body.
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    /// HTTP call response body.
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    /// gRPC call response message.
    pub const GRPC_CALL_MESSAGE: i32 = 5;
    /// VM configuration.
    pub const VM_CONFIGURATION: i32 = 6;
    /// Plugin configuration.
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// Header map types.
pub mod map {
    /// Request headers.
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    /// Request trailers.
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    /// Response headers.
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    /// Response trailers.
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
    /// HTTP call response headers.
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    /// HTTP call response trailers.
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}
