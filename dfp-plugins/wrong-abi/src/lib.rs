//! Exports a dfp plugin entry point whose table claims ABI version 999, as a plugin built for a future dfp
//! would: the host must refuse it with a message naming both versions.

/// The start of a plugin table: only the version, which every ABI version keeps first.
#[repr(C)]
pub struct FutureTable {
    /// The claimed ABI version.
    pub abi_version: u32,
}

static TABLE: FutureTable = FutureTable { abi_version: 999 };

/// The dfp plugin entry point.
#[no_mangle]
pub extern "C" fn dfp_plugin_entry() -> *const FutureTable {
    &TABLE
}
