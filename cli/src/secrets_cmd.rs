//! `shoal secrets`: the encryption keys of Secrets at rest
//! (`DIR/pki/secrets-encryption.key`; see host/src/store/encrypted.rs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use shoal_host::store::embedded::{EmbeddedOptions, EmbeddedStore};
use shoal_host::store::encrypted::{self, KeyRing};

/// `shoal secrets` subcommands.
#[derive(clap::Subcommand)]
pub enum SecretsCmd {
    /// Add a new key that encrypts from the next server start on; the server
    /// then re-encrypts every Secret with it. Older keys stay for decryption
    /// until removed with `remove-key`.
    RotateKey {
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/shoal")]
        data_dir: PathBuf,
    },
    /// Re-encrypt every stored Secret with the first key, then drop key ID
    /// from the key file. The server must be stopped (this opens its database).
    RemoveKey {
        /// The key id to remove (as in `list-keys`).
        id: String,
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/shoal")]
        data_dir: PathBuf,
    },
    /// Print the key ids, the encrypting one first (never the keys).
    ListKeys {
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/shoal")]
        data_dir: PathBuf,
    },
}

/// Runs a `shoal secrets` subcommand.
pub fn run(cmd: SecretsCmd) -> anyhow::Result<()> {
    match cmd {
        SecretsCmd::RotateKey { data_dir } => {
            let path = key_file(&data_dir)?;
            let mut ring = KeyRing::load(&path)?;
            let id = ring.rotate();
            ring.save(&path)?;
            println!(
                "added key {id}; it encrypts from the next server start, which re-encrypts \
                 every Secret with it. Then remove the old key: shoal secrets remove-key {} \
                 --data-dir {}",
                ring.ids()[1],
                data_dir.display()
            );
            Ok(())
        }
        SecretsCmd::RemoveKey { id, data_dir } => {
            let path = key_file(&data_dir)?;
            let mut ring = KeyRing::load(&path)?;
            // Refuse before touching the database when the id is wrong.
            ring.clone().remove(&id)?;
            let db = data_dir.join("shoal.redb");
            if db.exists() {
                let store = EmbeddedStore::open(&db, EmbeddedOptions::default(), None)
                    .with_context(|| {
                        format!(
                            "opening {} (stop the server first; it holds the database)",
                            db.display()
                        )
                    })?;
                let n = encrypted::reencrypt(&store, &ring)?;
                if n > 0 {
                    println!("re-encrypted {n} stored values with key {}", ring.primary());
                }
            }
            ring.remove(&id)?;
            ring.save(&path)?;
            println!("removed key {id}; keys now: {}", ring.ids().join(", "));
            Ok(())
        }
        SecretsCmd::ListKeys { data_dir } => {
            let ring = KeyRing::load(&key_file(&data_dir)?)?;
            for (i, id) in ring.ids().iter().enumerate() {
                println!("{id}{}", if i == 0 { "\t(encrypts)" } else { "" });
            }
            Ok(())
        }
    }
}

/// The key file of `data_dir`, which the server creates at its first start.
fn key_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = KeyRing::path(&data_dir.join("pki"));
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: start the server once with --data-dir {} to create it",
        path.display(),
        data_dir.display()
    );
    Ok(path)
}
