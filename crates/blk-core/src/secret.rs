//! [`Secret`]: the bytes of a password or key handed to a format (QEMU's `secret` objects, named by options
//! like QCOW2's `encrypt.key-secret`). Zeroed when the last clone is dropped, never shown by `Debug`, never
//! put into an [`Error`](crate::Error).

use std::sync::Arc;

use zeroize::Zeroizing;

/// Secret bytes: shared by clones, zeroed when the last one is dropped, `Debug` shows none of them.
///
/// ```
/// use blk_core::Secret;
/// let secret = Secret::new(b"hunter2".to_vec());
/// assert_eq!(secret.bytes(), b"hunter2");
/// assert_eq!(format!("{secret:?}"), "Secret(..)");
/// ```
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<Vec<u8>>>);

impl Secret {
    /// Takes ownership of `bytes` (zeroed when the secret is dropped).
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Arc::new(Zeroizing::new(bytes)))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Secret {}

/// The secrets defined for this process by id (QEMU's `--object secret,id=ID`), for options that name a
/// secret by its id, like QCOW2's `encrypt.key-secret=ID` at create.
static DEFINED: std::sync::Mutex<Vec<(String, Secret)>> = std::sync::Mutex::new(Vec::new());

impl Secret {
    /// Defines (or redefines) the secret `id` for [`Secret::lookup`].
    ///
    /// ```
    /// use blk_core::Secret;
    /// Secret::define("sec-doc", Secret::new(b"pw".to_vec()));
    /// assert_eq!(Secret::lookup("sec-doc").unwrap().bytes(), b"pw");
    /// assert!(Secret::lookup("nope").is_none());
    /// ```
    pub fn define(id: &str, secret: Secret) {
        let mut all = DEFINED.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(i, _)| i != id);
        all.push((id.to_string(), secret));
    }

    /// The secret defined as `id`.
    pub fn lookup(id: &str) -> Option<Secret> {
        DEFINED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.clone())
    }
}
