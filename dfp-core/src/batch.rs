//! The unit of data in dfp: an Arrow [`RecordBatch`] plus an [`Envelope`].
//!
//! Stages work on columns, not rows. A batch that crosses workers (within a process or, in a cluster, between processes) is encoded with
//! Arrow IPC; inside one worker it moves by pointer.

use std::sync::Arc;

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

/// Where a batch came from and what it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The id of the stage that produced the batch's rows first (a source).
    pub source: String,
    /// Where inside that source: a file path, a topic/partition, … (empty when unknown).
    pub origin: String,
    /// Smallest event time in the batch, microseconds since the Unix epoch (UTC), when known.
    pub event_time_min: Option<i64>,
    /// Largest event time in the batch, microseconds since the Unix epoch (UTC), when known.
    pub event_time_max: Option<i64>,
    /// What a sink hands back to the source once the batch is durably written (at-least-once sources).
    pub ack: Option<AckToken>,
    /// Logical time. A source may set it (non-decreasing per source instance, e.g. the rank of the file
    /// in time order) to have the batch emitted at that time; otherwise the runtime numbers batches. The
    /// runtime sets it on every batch it hands to a transform or sink. All batches of logical time `t`
    /// have been delivered once [`Transform::advance`](crate::Transform::advance) reports a frontier
    /// above `t`.
    pub time: Option<u64>,
}

/// Identifies a source position that can be acknowledged once every row derived from it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AckToken {
    /// The worker whose source instance produced the batch.
    pub worker: u32,
    /// A sequence number private to that source instance.
    pub seq: u64,
}

/// An Arrow record batch with its envelope.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The rows, as columns.
    pub data: RecordBatch,
    /// Provenance and acknowledgement data.
    pub envelope: Envelope,
}

impl Batch {
    /// A batch with an envelope naming its source stage.
    pub fn new(data: RecordBatch, source: impl Into<String>) -> Self {
        Batch { data, envelope: Envelope { source: source.into(), ..Envelope::default() } }
    }

    /// Replaces the data, keeping the envelope (what a transform does).
    pub fn with_data(&self, data: RecordBatch) -> Self {
        Batch { data, envelope: self.envelope.clone() }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// Encodes the record batch as one Arrow IPC stream (schema + batch).
    pub fn encode_ipc(&self) -> Result<Vec<u8>, ArrowError> {
        encode_ipc(&self.data)
    }
}

/// Encodes a record batch as an Arrow IPC stream.
pub fn encode_ipc(data: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::with_capacity(data.get_array_memory_size() + 512);
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &data.schema())?;
        writer.write(data)?;
        writer.finish()?;
    }
    Ok(buf)
}

/// Decodes an Arrow IPC stream holding exactly one record batch.
pub fn decode_ipc(bytes: &[u8]) -> Result<RecordBatch, ArrowError> {
    let mut reader = arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
    let schema = reader.schema();
    match reader.next() {
        Some(batch) => batch,
        None => Ok(RecordBatch::new_empty(Arc::clone(&schema))),
    }
}

/// Wire form: envelope fields plus the IPC bytes, as serde sees it (timely encodes with bincode).
#[derive(Serialize, Deserialize)]
struct Wire {
    envelope: Envelope,
    ipc: IpcBytes,
}

struct IpcBytes(Vec<u8>);

impl Serialize for IpcBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for IpcBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IpcBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("Arrow IPC bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<IpcBytes, E> {
                Ok(IpcBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<IpcBytes, E> {
                Ok(IpcBytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<IpcBytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(IpcBytes(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ipc = self.encode_ipc().map_err(serde::ser::Error::custom)?;
        Wire { envelope: self.envelope.clone(), ipc: IpcBytes(ipc) }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let data = decode_ipc(&wire.ipc.0).map_err(serde::de::Error::custom)?;
        Ok(Batch { data, envelope: wire.envelope })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn sample() -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("username", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("alice"), None])), Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let mut b = Batch::new(data, "logs");
        b.envelope.origin = "a.json".into();
        b.envelope.ack = Some(AckToken { worker: 1, seq: 7 });
        b
    }

    #[test]
    fn ipc_round_trip_keeps_rows_and_nulls() {
        let b = sample();
        let back = decode_ipc(&b.encode_ipc().unwrap()).unwrap();
        assert_eq!(back, b.data);
    }

    #[test]
    fn serde_round_trip_keeps_envelope() {
        let b = sample();
        let json = serde_json::to_vec(&b).unwrap();
        let back: Batch = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.data, b.data);
        assert_eq!(back.envelope, b.envelope);
    }
}
