//! JSON documents serialized once, up front: hashed into the event chain and
//! sent to PostgreSQL as the same bytes.

use tokio_postgres::types::ToSql;

use crate::StoreError;

/// A document serialized up front and sent as the `json` type's text (its
/// binary form), which PostgreSQL keeps byte for byte. `Json<T>` serializes
/// into the statement's buffer a few bytes at a time, which cost more than
/// the serializing itself.
#[derive(Debug)]
pub(crate) struct Document(pub Vec<u8>);

impl Document {
    pub fn of(value: &impl serde::Serialize) -> Result<Self, StoreError> {
        Ok(Self(serde_json::to_vec(value)?))
    }
}

impl ToSql for Document {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    tokio_postgres::types::accepts!(JSON);
    tokio_postgres::types::to_sql_checked!();
}

/// Serializes each of `values`.
pub(crate) fn documents<'a, T: serde::Serialize + 'a>(
    values: impl Iterator<Item = &'a T>,
) -> Result<Vec<Document>, StoreError> {
    values.map(Document::of).collect()
}
