//! `uniffi-bindgen generate --library libcosigner_ffi.so --language kotlin|swift|python`
//! (`make bindings`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
