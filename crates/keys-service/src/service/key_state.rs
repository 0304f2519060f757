//! The internal reads authz falls back to when its caches miss.

use prost::Message;
use tollgate_core::SecretHash;
use tollgate_proto::keys::v1 as pb;

use super::KeysService;
use crate::error::{KeysError, KeysResult};
use crate::snapshot;

impl KeysService {
    /// The state of the key a secret hash belongs to. Deleted keys are NOT_FOUND, as unknown
    /// ones are. The answer is also written to the key-state cache, which repairs it after
    /// Redis lost its data.
    pub async fn key_state(&self, hash: &SecretHash) -> KeysResult<pb::KeyState> {
        let key_id = self.store.key_id_for_secret(hash).await.map_err(KeysError::from_store("key"))?;
        let key_id = key_id.ok_or(KeysError::NotFound("key"))?;
        let source = self
            .store
            .load_key_states(std::slice::from_ref(&key_id))
            .await
            .map_err(KeysError::from_store("key"))?
            .pop()
            .ok_or(KeysError::NotFound("key"))?;
        let now = self.now();
        self.sync.repair_in_background(snapshot::key_state_writes(&source, &self.config.caps, now), None);
        if source.deleted {
            return Err(KeysError::NotFound("key"));
        }
        let secret = source.secrets.iter().find(|s| s.hash == *hash).ok_or(KeysError::NotFound("key"))?;
        Ok(snapshot::key_state(&source, secret.expire_time, &self.config.caps))
    }

    /// The states of keys by (account, key id), deleted keys included (`deleted` set), for
    /// metering; unknown keys and keys of another account are left out.
    pub async fn key_states_by_id(&self, keys: &[(String, String)]) -> KeysResult<Vec<pb::KeyState>> {
        let ids: Vec<String> = keys.iter().map(|(_, key_id)| key_id.clone()).collect();
        let sources = self.store.load_key_states(&ids).await.map_err(KeysError::from_store("key"))?;
        Ok(sources
            .iter()
            .filter(|source| keys.iter().any(|(a, k)| *a == source.key.account_id && *k == source.key.id))
            .map(|source| snapshot::key_state(source, None, &self.config.caps))
            .collect())
    }

    /// The whole catalog as authz prices it.
    pub async fn model_catalog(&self) -> KeysResult<pb::GetModelCatalogResponse> {
        let models = self.store.all_models().await.map_err(KeysError::from_store("model"))?;
        let update_time = models.iter().map(|m| m.update_time).max().unwrap_or(0);
        let catalog = snapshot::catalog(&models, update_time);
        self.sync.repair_in_background(Vec::new(), Some(catalog.encode_to_vec()));
        Ok(catalog)
    }
}
