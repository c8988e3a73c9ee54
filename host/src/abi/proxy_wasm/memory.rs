//! Guest memory access, bounds-checked in one place. Every hostcall reads and
//! writes the module's memory through these; an out-of-range pointer is
//! `Status::InvalidMemoryAccess`, never a host panic.

use wasmtime::Caller;

use super::status::Status;
use super::vm::VmState;

/// Reads `len` bytes at `ptr`.
pub fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    with_guest_bytes(caller, (ptr, len), (0, 0), |bytes, _, _| Ok(bytes.to_vec()))
}

/// Lends the guest's bytes at `a` and at `b` (each a pointer and a length)
/// together with the host state to `f`, without copying the bytes out: the
/// header hostcalls read their names and values in place.
pub fn with_guest_bytes<T>(
    caller: &mut Caller<'_, VmState>,
    a: (i32, i32),
    b: (i32, i32),
    f: impl FnOnce(&[u8], &[u8], &mut VmState) -> Result<T, Status>,
) -> Result<T, Status> {
    let Some(memory) = caller.data().memory else {
        // A module without memory can still pass empty slices.
        return if a.1 == 0 && b.1 == 0 {
            f(&[], &[], caller.data_mut())
        } else {
            Err(Status::InternalFailure)
        };
    };
    let (data, state) = memory.data_and_store_mut(caller);
    let (a, b) = (guest_slice(data, a)?, guest_slice(data, b)?);
    f(a, b, state)
}

fn guest_slice(data: &[u8], (ptr, len): (i32, i32)) -> Result<&[u8], Status> {
    if len == 0 {
        return Ok(&[]);
    }
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    data.get(start..start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Writes `bytes` at `ptr`.
pub fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = caller.data().memory.ok_or(Status::InternalFailure)?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    memory
        .data_mut(caller)
        .get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 at `ptr`.
pub fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64 at `ptr`.
pub fn write_u64(caller: &mut Caller<'_, VmState>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the module: allocates exactly `len` bytes with the module's
/// allocator, copies them, and writes the pointer and length to the return
/// slots. Empty data is written as (0, 0) without calling the allocator.
/// A trap in the allocator is the module's trap.
pub fn give(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<Result<(), Status>> {
    if bytes.is_empty() {
        return Ok(write_u32(caller, ret_ptr, 0).and_then(|()| write_u32(caller, ret_len, 0)));
    }
    // Taken out for the call and put back, not cloned: cloning a TypedFunc
    // clones its registered type. (A guest allocator that called back into
    // a hostcall handing out memory would find none and get an error.)
    let Some(malloc) = caller.data_mut().malloc.take() else {
        return Ok(Err(Status::InternalFailure));
    };
    let ptr = malloc.call(&mut *caller, bytes.len() as i32);
    caller.data_mut().malloc = Some(malloc);
    let ptr = ptr?;
    if ptr == 0 {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    Ok(write(caller, ptr, bytes)
        .and_then(|()| write_u32(caller, ret_ptr, ptr as u32))
        .and_then(|()| write_u32(caller, ret_len, bytes.len() as u32)))
}
