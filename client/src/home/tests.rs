#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;
use crate::store::{temp_path, write_private, write_private_via};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_file()
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_symlink()
}

/// A temporary directory holding `victim`, a file of someone else's that a planted link names;
/// the directory and the victim's path.
fn dir_with_victim() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"victim's data").unwrap();
    (dir, victim)
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A consistent wallet file for `id`: a dealer's 2-of-3 key (the home only stores it).
fn wallet_file(id: &WalletId) -> WalletFile {
    let (_, pkp) = frost_secp256k1_tr::keys::generate_with_dealer(
        3,
        2,
        frost_core::keys::IdentifierList::Default,
        rand_core::OsRng,
    )
    .unwrap();
    let parties = [pid(1), pid(2), pid(3)];
    crate::wallet::wallet_file(
        *id,
        pid(1),
        &parties,
        2,
        Epoch(0),
        &pkp,
        crate::address::Network::Regtest,
    )
    .unwrap()
}

#[test]
fn private_files_are_0600_and_leave_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_private(&path, b"one").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    assert_eq!(mode(&path), 0o600);
    // Replacing a file that someone made world-readable yields a 0600 file again.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_private(&path, b"two").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(names(dir.path()), ["secret"]);
}

#[test]
fn temporary_names_are_hidden_unpredictable_and_beside_the_target() {
    let path = Path::new("/some/dir/0123.share");
    let a = temp_path(path).unwrap();
    let b = temp_path(path).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.parent(), path.parent());
    let name = a.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(".0123.share.") && name.ends_with(".tmp"),
        "{name}"
    );
    // A wallet's temporary files are never taken for wallets (`wallets()` reads `*.json`).
    let json = temp_path(Path::new("/w/abcd.json")).unwrap();
    assert!(!json.to_str().unwrap().ends_with(".json"));
}

#[test]
fn a_symlink_planted_at_the_temporary_path_is_not_followed() {
    let (dir, victim) = dir_with_victim();
    let target = dir.path().join("device.key");
    let tmp = dir.path().join(".device.key.planted.tmp");
    symlink(&victim, &tmp).unwrap();
    let err = write_private_via(&target, &tmp, b"secret").unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim's data");
    assert!(!occupied(&target));
    // A dangling link: the file it names is not created either.
    let elsewhere = dir.path().join("elsewhere");
    let tmp2 = dir.path().join(".device.key.dangling.tmp");
    symlink(&elsewhere, &tmp2).unwrap();
    write_private_via(&target, &tmp2, b"secret").unwrap_err();
    assert!(!occupied(&elsewhere));
    assert!(!occupied(&target));
    // Both links are left as they were: nothing we did not create is removed.
    assert!(is_symlink(&tmp));
    assert!(is_symlink(&tmp2));
}

#[test]
fn a_symlink_at_the_target_is_replaced_not_written_through() {
    let (dir, victim) = dir_with_victim();
    let target = dir.path().join("wallet.share");
    symlink(&victim, &target).unwrap();
    write_private(&target, b"secret").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim's data");
    assert!(is_regular_file(&target));
    assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    assert_eq!(mode(&target), 0o600);
}

#[test]
fn home_writes_do_not_follow_symlinks() {
    let (dir, victim) = dir_with_victim();
    let home = Home::open(&dir.path().join("home")).unwrap();
    let id = WalletId([7; 16]);
    let wallet = wallet_file(&id);
    home.save_wallet(&wallet, b"share 0").unwrap();
    let share = home.wallet_path(&id, "share");
    assert_eq!(mode(&share), 0o600);
    // A link swapped in for the share: a refresh replaces the link, the victim is untouched.
    std::fs::remove_file(&share).unwrap();
    symlink(&victim, &share).unwrap();
    home.replace_share(&wallet, b"share 1").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim's data");
    assert!(is_regular_file(&share));
    assert_eq!(home.share(&id).unwrap().as_slice(), b"share 1");
    // The same for a prepared share.
    let prepared = home.wallet_path(&id, "prepared");
    symlink(&victim, &prepared).unwrap();
    home.save_prepared_share(&id, b"share 2").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim's data");
    assert!(is_regular_file(&prepared));
    assert_eq!(mode(&prepared), 0o600);
    // A new wallet whose share path is a dangling link is refused, not written through it.
    let other = WalletId([8; 16]);
    let elsewhere = dir.path().join("elsewhere");
    symlink(&elsewhere, home.wallet_path(&other, "share")).unwrap();
    let err = home
        .save_wallet(&wallet_file(&other), b"share")
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(!occupied(&elsewhere));
    // Nothing but the wallets' own files (and the links planted) is in the directory.
    let mut expected = vec![
        format!("{}.json", id.to_hex()),
        format!("{}.prepared", id.to_hex()),
        format!("{}.share", id.to_hex()),
        format!("{}.share", other.to_hex()),
    ];
    expected.sort();
    assert_eq!(names(&dir.path().join("home/wallets")), expected);
    assert_eq!(home.wallets().unwrap(), [wallet]);
}

#[test]
fn keys_are_not_written_through_a_link_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let path = dir.path().join("recovery.key");
    write_p256_key(&path, &key).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(read_p256_key(&path).unwrap(), key);
    let err = write_p256_key(&path, &key).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    // A dangling link where the key should go: refused, and the file it names is not created.
    let elsewhere = dir.path().join("elsewhere.key");
    let link = dir.path().join("link.key");
    symlink(&elsewhere, &link).unwrap();
    let err = write_p256_key(&link, &key).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert!(!occupied(&elsewhere));
    // The device key of a new home is 0600 too.
    Home::open(&dir.path().join("home")).unwrap();
    assert_eq!(mode(&dir.path().join("home/device.key")), 0o600);
}

/// Party `n`, where `n` is a literal known not to be 0.
fn pid(n: u16) -> cosigner_protocol::id::PartyId {
    cosigner_protocol::id::PartyId::new(n).unwrap()
}

#[test]
fn wallet_files_are_read_once_into_checked_values() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    let id = WalletId([0x5a; 16]);
    let wallet = wallet_file(&id);
    home.save_wallet(&wallet, b"share").unwrap();
    // The JSON keeps its text form: hex id and key, the network's name.
    let path = dir
        .path()
        .join("wallets")
        .join(format!("{}.json", id.to_hex()));
    let text: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(text["wallet_id"], id.to_hex());
    assert_eq!(
        text["group_public_key"],
        hex::encode(wallet.group_public_key)
    );
    assert_eq!(text["network"], "regtest");
    assert_eq!(home.wallet(&id).unwrap(), wallet);
    // A file whose fields disagree (an edited address, another wallet's id, a damaged package)
    // is refused when read, naming the file, instead of failing later in a ceremony.
    let edits: [(&str, serde_json::Value); 4] = [
        (
            "address",
            "bcrt1pqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq".into(),
        ),
        ("wallet_id", "00".repeat(16).into()),
        ("public_key_package", "00ff".into()),
        ("network", "moon".into()),
    ];
    for (field, value) in edits {
        let mut edited = text.clone();
        edited[field] = value;
        std::fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
        let err = home.wallet(&id).unwrap_err();
        assert!(matches!(err, ClientError::Home { .. }), "{field}: {err:?}");
    }
}

#[test]
fn prepared_shares_are_kept_side_by_side_and_a_damaged_file_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let id = WalletId([5; 16]);
    // A file of one raw share, as written before lists (and in the clear, before sealing): the
    // home's first open seals it in place.
    std::fs::create_dir_all(dir.path().join("wallets")).unwrap();
    let legacy = dir.path().join(format!("wallets/{}.prepared", id.to_hex()));
    std::fs::write(&legacy, b"\x00raw share").unwrap();
    let home = Home::open(dir.path()).unwrap();
    let path = home.wallet_path(&id, "prepared");
    assert_eq!(path, legacy);
    assert!(crate::store::is_sealed(&std::fs::read(&path).unwrap()));
    home.save_prepared_share(&id, b"second").unwrap();
    let kept: Vec<Vec<u8>> = home
        .prepared_shares(&id)
        .unwrap()
        .iter()
        .map(|s| s.to_vec())
        .collect();
    assert_eq!(kept, [b"\x00raw share".to_vec(), b"second".to_vec()]);
    for n in 0..10u8 {
        home.save_prepared_share(&id, &[n + 1]).unwrap();
    }
    assert_eq!(
        home.prepared_shares(&id).unwrap().len(),
        super::MAX_PREPARED
    );
    assert_eq!(home.prepared_share(&id).unwrap().unwrap().as_slice(), [10]);
    // Damaged: skipped, and a new share can still be kept.
    for damaged in [&b"[not json"[..], b"[\"zz\", \"0a\"]", b""] {
        std::fs::write(&path, damaged).unwrap();
        let read = home.prepared_shares(&id).unwrap();
        assert!(read.len() <= 1, "{damaged:?}");
        home.save_prepared_share(&id, b"fresh").unwrap();
        assert_eq!(
            home.prepared_share(&id).unwrap().unwrap().as_slice(),
            b"fresh"
        );
    }
}

#[test]
fn a_home_directory_keeps_shares_sealed_and_its_public_file_readable() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    let id = WalletId([6; 16]);
    home.save_journal(&id, "share", b"the share's secret bytes")
        .unwrap();
    let on_disk = std::fs::read(home.wallet_path(&id, "share")).unwrap();
    assert!(crate::store::is_sealed(&on_disk));
    assert!(!on_disk.windows(6).any(|w| w == b"secret"));
    assert_eq!(&*home.share(&id).unwrap(), b"the share's secret bytes");
    assert_eq!(mode(&dir.path().join("storage.key")), 0o600);
    // A sealed share moved under another wallet's name does not open there.
    let other = WalletId([7; 16]);
    std::fs::write(home.wallet_path(&other, "share"), &on_disk).unwrap();
    assert!(matches!(home.share(&other), Err(ClientError::Home { .. })));
    // The public facts stay readable by people and tools.
    home.save_local_policy(&id, Some("")).unwrap();
    assert!(!crate::store::is_sealed(
        &std::fs::read(home.wallet_path(&id, "policy")).unwrap()
    ));
}

#[test]
fn a_home_in_memory_seals_every_record_and_signs_through_its_device_key() {
    use cosigner_protocol::auth::{P256Signer, public_key_bytes, verify_digest};
    let home = Home::in_memory().unwrap();
    let id = WalletId([8; 16]);
    home.save_local_policy(&id, Some("rule")).unwrap();
    assert_eq!(home.local_policy(&id).unwrap().as_deref(), Some("rule"));
    assert!(home.save_journal(&id, "share", b"x").is_ok());
    assert_eq!(&*home.share(&id).unwrap(), b"x");
    let key = home.device_key().unwrap();
    let signature = key.sign_prehashed(&[3; 32]).unwrap();
    verify_digest(&public_key_bytes(&key), &[3; 32], &signature.to_bytes()).unwrap();
    assert!(format!("{home:?}").contains("Everything"));
    assert!(!format!("{key:?}").contains("secret"));
}

/// A home directory as the previous version left it: a clear share of wallet `[9; 16]` and a
/// recovery credential beside it, no storage key.
fn old_home() -> (tempfile::TempDir, WalletId) {
    let dir = tempfile::tempdir().unwrap();
    let id = WalletId([9; 16]);
    let wallets = dir.path().join("wallets");
    std::fs::create_dir_all(&wallets).unwrap();
    std::fs::write(
        wallets.join(format!("{}.share", id.to_hex())),
        b"\x00old share",
    )
    .unwrap();
    for other in [
        format!("{}.recovery.key", id.to_hex()),
        "recovery.key.new".into(),
    ] {
        std::fs::write(wallets.join(other), b"-----BEGIN PRIVATE KEY-----").unwrap();
    }
    (dir, id)
}

#[test]
fn the_migration_seals_shares_only_and_never_a_recovery_credential() {
    let (dir, id) = old_home();
    let home = Home::open(dir.path()).unwrap();
    assert_eq!(&*home.share(&id).unwrap(), b"\x00old share");
    let wallets = dir.path().join("wallets");
    for other in [
        format!("{}.recovery.key", id.to_hex()),
        "recovery.key.new".into(),
    ] {
        assert_eq!(
            std::fs::read(wallets.join(other)).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
    }
    // A clear share put back afterwards is refused as damaged, never adopted.
    std::fs::write(home.wallet_path(&id, "share"), b"\x00planted").unwrap();
    assert!(home.share(&id).is_err());
}

#[test]
fn first_opens_racing_keep_one_storage_key_and_every_share() {
    for _ in 0..5 {
        let (dir, id) = old_home();
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| Home::open(dir.path()).unwrap());
            }
        });
        let home = Home::open(dir.path()).unwrap();
        assert_eq!(&*home.share(&id).unwrap(), b"\x00old share");
    }
}

#[test]
fn a_sealed_home_without_its_storage_key_is_refused_not_given_a_new_one() {
    let (dir, id) = old_home();
    Home::open(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("storage.key")).unwrap();
    let err = Home::open(dir.path()).unwrap_err();
    assert!(matches!(err, ClientError::Home { .. }), "{err:?}");
    assert!(!dir.path().join("storage.key").exists());
    let _ = id;
}

#[test]
fn a_store_that_fails_for_now_is_an_error_not_an_empty_list_of_prepared_shares() {
    use crate::store::{AeadSealer, MemoryDeviceKey, MemoryStore, SealScope, StoreResult};
    struct Failing(MemoryStore);
    impl crate::store::WalletStore for Failing {
        fn read(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
            if name.ends_with(".prepared") {
                return Err(crate::store::StoreError::Io {
                    name: name.into(),
                    reason: "keystore locked".into(),
                });
            }
            self.0.read(name)
        }
        fn write(&self, name: &str, bytes: &[u8]) -> StoreResult<()> {
            self.0.write(name, bytes)
        }
        fn remove(&self, name: &str) -> StoreResult<()> {
            self.0.remove(name)
        }
        fn list(&self) -> StoreResult<Vec<String>> {
            self.0.list()
        }
    }
    let home = Home::with_storage(
        std::sync::Arc::new(Failing(MemoryStore::default())),
        std::sync::Arc::new(AeadSealer::random().unwrap()),
        std::sync::Arc::new(MemoryDeviceKey::random()),
        SealScope::Everything,
    )
    .unwrap();
    let id = WalletId([10; 16]);
    assert!(home.prepared_shares(&id).is_err());
    assert!(home.save_prepared_share(&id, b"new").is_err());
}
