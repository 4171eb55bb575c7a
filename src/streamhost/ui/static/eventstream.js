// Decoder for application/vnd.amazon.eventstream (docs/protocols.md §1), the framing of
// InvokeEndpointWithResponseStream. Bytes arrive in arbitrary pieces from fetch(): a frame may be
// split across reads and one read may carry several frames, so the decoder buffers until a whole
// frame is there, checks both CRCs, and hands out {headers, payload} messages.
//
// Frame (big-endian): u32 total_len | u32 headers_len | u32 prelude_crc | headers | payload | u32 crc
// Header: u8 name_len, name, u8 type, value (0 true, 1 false, 2 i8, 3 i16, 4 i32, 5 i64,
// 6 bytes u16 len, 7 string u16 len, 8 timestamp i64 ms, 9 uuid 16 bytes).

const PRELUDE = 12;
const MIN_FRAME = 16;
const MAX_FRAME = 16 + 128 * 1024 + 24 * 1024 * 1024; // botocore's header and payload limits

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** zlib's crc32 of bytes[start:end]. */
export function crc32(bytes, start = 0, end = bytes.length) {
  let crc = 0xffffffff;
  for (let i = start; i < end; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

export class EventStreamError extends Error {}

const utf8 = new TextDecoder("utf-8");

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Parse the headers block of one frame into a plain object (name -> value). */
export function parseHeaders(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headers = {};
  let pos = 0;
  const need = (n) => {
    if (pos + n > bytes.length) throw new EventStreamError("event-stream header runs past its block");
  };
  while (pos < bytes.length) {
    need(1);
    const nameLen = bytes[pos++];
    need(nameLen + 1);
    const name = utf8.decode(bytes.subarray(pos, pos + nameLen));
    pos += nameLen;
    const type = bytes[pos++];
    let value;
    switch (type) {
      case 0: value = true; break;
      case 1: value = false; break;
      case 2: need(1); value = view.getInt8(pos); pos += 1; break;
      case 3: need(2); value = view.getInt16(pos); pos += 2; break;
      case 4: need(4); value = view.getInt32(pos); pos += 4; break;
      case 5: need(8); value = view.getBigInt64(pos); pos += 8; break;
      case 6:
      case 7: {
        need(2);
        const len = view.getUint16(pos);
        pos += 2;
        need(len);
        const raw = bytes.slice(pos, pos + len);
        value = type === 7 ? utf8.decode(raw) : raw;
        pos += len;
        break;
      }
      case 8: need(8); value = new Date(Number(view.getBigInt64(pos))); pos += 8; break;
      case 9: need(16); value = hex(bytes.subarray(pos, pos + 16)); pos += 16; break;
      default: throw new EventStreamError(`unknown event-stream header type ${type}`);
    }
    if (Object.prototype.hasOwnProperty.call(headers, name)) {
      throw new EventStreamError(`duplicate event-stream header ${name}`);
    }
    headers[name] = value;
  }
  return headers;
}

/** Incremental decoder: push(bytes) returns the messages completed by those bytes. */
export class EventStreamDecoder {
  constructor() {
    this.buffer = new Uint8Array(0);
  }

  push(chunk) {
    if (chunk && chunk.length) {
      const joined = new Uint8Array(this.buffer.length + chunk.length);
      joined.set(this.buffer, 0);
      joined.set(chunk, this.buffer.length);
      this.buffer = joined;
    }
    const messages = [];
    let offset = 0;
    while (this.buffer.length - offset >= PRELUDE) {
      const view = new DataView(this.buffer.buffer, this.buffer.byteOffset + offset);
      const total = view.getUint32(0);
      const headersLen = view.getUint32(4);
      if (crc32(this.buffer, offset, offset + 8) !== view.getUint32(8)) {
        throw new EventStreamError("event-stream prelude checksum mismatch");
      }
      if (total < MIN_FRAME || total > MAX_FRAME || headersLen > total - MIN_FRAME) {
        throw new EventStreamError(`implausible event-stream frame (length ${total}, headers ${headersLen})`);
      }
      if (this.buffer.length - offset < total) break; // the rest of this frame is still on its way
      const frame = this.buffer.subarray(offset, offset + total);
      const frameView = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
      if (crc32(frame, 0, total - 4) !== frameView.getUint32(total - 4)) {
        throw new EventStreamError("event-stream message checksum mismatch");
      }
      const headers = parseHeaders(frame.subarray(PRELUDE, PRELUDE + headersLen));
      const payload = frame.slice(PRELUDE + headersLen, total - 4);
      messages.push({ headers, payload });
      offset += total;
    }
    if (offset) this.buffer = this.buffer.slice(offset);
    return messages;
  }

  /** Call at end of body: leftover bytes mean the stream was cut off inside a frame. */
  end() {
    if (this.buffer.length) {
      throw new EventStreamError(`the stream ended inside a frame (${this.buffer.length} bytes left over)`);
    }
  }
}
