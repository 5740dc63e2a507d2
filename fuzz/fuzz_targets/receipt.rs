#![no_main]
// the body is paygate_gateway::fuzzing::receipt, also run on stable over the committed corpus
libfuzzer_sys::fuzz_target!(|data: &[u8]| paygate_gateway::fuzzing::receipt(data));
