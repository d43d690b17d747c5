// Encodes a Sparkplug B NBIRTH payload with Eclipse Tahu's own npm encoder
// (sparkplug-payload), an implementation tagstream did not write, and
// prints it as hex. Tahu puts UInt32 (and the narrower integers) in
// long_value, as Ignition does.
import sparkplug from "sparkplug-payload";

const payload = sparkplug.get("spBv1.0").encodePayload({
  timestamp: Date.now(),
  seq: 0,
  metrics: [
    { name: "bdSeq", type: "UInt64", value: 0 },
    { name: "u32", type: "UInt32", value: 4000000000 },
    { name: "u16", type: "UInt16", value: 65535 },
    { name: "i8", type: "Int8", value: -3 },
    { name: "i32", type: "Int32", value: -70000 },
    { name: "temp", type: "Double", value: 21.5 },
  ],
});
process.stdout.write(Buffer.from(payload).toString("hex"));
