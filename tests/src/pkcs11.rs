//! A test token and raw PKCS#11 access to it: what the tests of `cosigner-kms` check behind its
//! back (a session on the token beside cosigner-kms's own, as any code in the process could open).

use std::path::{Path, PathBuf};

use cosigner_kms::{KeyProtection, KmsError, Pin, Token};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;

use crate::{SoftHsm, softhsm_module};

/// The security officer's PIN of every test token.
pub const SO_PIN: &str = "so-pin-123456";
/// The user's PIN of every test token.
pub const USER_PIN: &str = "user-pin-123456";

/// A fresh SoftHSM installed for this process, and the module path.
///
/// # Panics
/// If the SoftHSM directory cannot be made, or another one is installed in this process.
pub fn softhsm_for_this_process() -> (SoftHsm, PathBuf) {
    let hsm = SoftHsm::new().unwrap_or_else(|e| panic!("SoftHSM: {e:#}"));
    hsm.install_env_for_this_process();
    (hsm, softhsm_module())
}

/// Initializes a token `label` with [`SO_PIN`] and [`USER_PIN`], logged in.
///
/// # Panics
/// If the token cannot be initialized.
pub fn init_token(module: &Path, label: &str) -> Token {
    Token::init(module, label, &Pin::new(SO_PIN), &Pin::new(USER_PIN))
        .unwrap_or_else(|e| panic!("initializing token {label}: {e}"))
}

/// [`softhsm_for_this_process`] with the token `label` initialized on it ([`init_token`]): the
/// SoftHSM (keep it alive as long as the token), the module path and the logged-in token.
///
/// # Panics
/// As those two do.
pub fn token_for_this_process(label: &str) -> (SoftHsm, PathBuf, Token) {
    let (hsm, module) = softhsm_for_this_process();
    let token = init_token(&module, label);
    (hsm, module, token)
}

/// Asserts that `err` is cosigner-kms's label error `variant` (`TokenNotFound`, `TokenExists`,
/// `KeyNotFound` or `KeyExists`) naming `label`.
///
/// # Panics
/// If it is another error, or names another label.
pub fn assert_label_error(err: &KmsError, variant: &str, label: &str) {
    let named = match err {
        KmsError::TokenNotFound { label } => Some(("TokenNotFound", label)),
        KmsError::TokenExists { label } => Some(("TokenExists", label)),
        KmsError::KeyNotFound { label } => Some(("KeyNotFound", label)),
        KmsError::KeyExists { label } => Some(("KeyExists", label)),
        _ => None,
    };
    assert_eq!(
        named.map(|(v, l)| (v, l.as_str())),
        Some((variant, label)),
        "{err:?}"
    );
}

/// The attributes of a private key object made behind cosigner-kms's back (as an operator's tool
/// might) with the given `CKA_SENSITIVE` and `CKA_EXTRACTABLE`: a private token object labelled
/// `label` with the `CKA_ID` `id`. The caller adds what its key type needs.
pub fn planted_key_template(
    label: &str,
    id: &[u8],
    sensitive: bool,
    extractable: bool,
) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(extractable),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// A raw session on `token`'s slot, read-write or read-only.
///
/// # Panics
/// If the module is not loaded or the session cannot be opened.
pub fn raw_session(module: &Path, token: &Token, read_write: bool) -> Session {
    let ctx = cosigner_kms::context(module).unwrap_or_else(|e| panic!("PKCS#11 context: {e}"));
    let session = if read_write {
        ctx.open_rw_session(token.slot())
    } else {
        ctx.open_ro_session(token.slot())
    };
    session.unwrap_or_else(|e| panic!("opening a raw session: {e}"))
}

/// Every object matching `template`.
///
/// # Panics
/// If the search fails.
pub fn find(session: &Session, template: &[Attribute]) -> Vec<ObjectHandle> {
    session
        .find_objects(template)
        .unwrap_or_else(|e| panic!("C_FindObjects {template:?}: {e}"))
}

/// The one key of `class` and `key_type` labelled `label`.
///
/// # Panics
/// If there is none or more than one.
pub fn find_key(
    session: &Session,
    class: ObjectClass,
    key_type: KeyType,
    label: &str,
) -> ObjectHandle {
    let template = [
        Attribute::Class(class),
        Attribute::KeyType(key_type),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    match find(session, &template).as_slice() {
        [one] => *one,
        other => panic!(
            "expected one {class} key labelled {label}, found {}",
            other.len()
        ),
    }
}

/// Destroys every object of the `classes` labelled `label`, behind cosigner-kms's back.
///
/// # Panics
/// If the search or a destruction fails.
pub fn destroy_objects(session: &Session, classes: &[ObjectClass], label: &str) {
    for class in classes {
        let template = [
            Attribute::Class(*class),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        for handle in find(session, &template) {
            session
                .destroy_object(handle)
                .unwrap_or_else(|e| panic!("C_DestroyObject: {e}"));
        }
    }
}

/// Asserts that `key`'s `CKA_VALUE` cannot be read (`C_GetAttributeInfo` answers
/// `CKR_ATTRIBUTE_SENSITIVE`, so reading it yields nothing: cryptoki drops unavailable
/// attributes), and returns the attributes of `also` that could be read.
///
/// # Panics
/// If the value is readable or the attributes cannot be queried.
pub fn assert_value_unreadable(
    session: &Session,
    key: ObjectHandle,
    also: &[AttributeType],
    what: &str,
) -> Vec<Attribute> {
    let info = session
        .get_attribute_info(key, &[AttributeType::Value])
        .unwrap_or_else(|e| panic!("C_GetAttributeInfo: {e}"));
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "{info:?}"
    );
    let wanted: Vec<AttributeType> = [AttributeType::Value]
        .into_iter()
        .chain(also.iter().copied())
        .collect();
    let attrs = session
        .get_attributes(key, &wanted)
        .unwrap_or_else(|e| panic!("C_GetAttributeValue: {e}"));
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "CKA_VALUE of the {what} was readable"
    );
    attrs
}

/// Asserts that `key`'s protection cannot be loosened after the fact and that the key cannot be
/// copied into a session object. Every key is tried with `CKA_EXTRACTABLE` true and
/// `CKA_SENSITIVE` false (PKCS#11 lets the first only go true -> false and the second only
/// false -> true), then with each of `also` (what its key type could otherwise be given).
///
/// # Panics
/// If any of it is accepted.
pub fn assert_cannot_loosen(session: &Session, key: ObjectHandle, also: &[Attribute]) {
    let loosen = [Attribute::Extractable(true), Attribute::Sensitive(false)];
    for attribute in loosen.iter().chain(also) {
        assert!(
            session
                .update_attributes(key, std::slice::from_ref(attribute))
                .is_err(),
            "{attribute:?} was accepted"
        );
    }
    assert!(
        session
            .copy_object(key, &[Attribute::Token(false)])
            .is_err()
    );
}

/// Asserts the protection of a key cosigner-kms generated on the token: sensitive and not
/// extractable, and so since its generation (it never left the token).
///
/// # Panics
/// If the protection is anything else.
pub fn assert_generated_on_token(protection: KeyProtection) {
    assert_eq!(
        protection,
        KeyProtection {
            sensitive: true,
            extractable: false,
            always_sensitive: true,
            never_extractable: true,
        }
    );
    assert!(protection.never_left_token());
}
