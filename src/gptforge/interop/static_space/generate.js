// Generation with the exported ONNX model: one call for the prompt, then one token per call with the
// KV cache passed back in ("past" in, "present" out). Past the context, the last three quarters of it are
// kept and a new cache is built, as gptforge's generate_ids does, so greedy text is the same as
// `gptforge sample --temperature 0`.
import { sampleNext, seededRandom } from "./sampling.js";

export class OnnxGPT {
  constructor(ort, session, config) {
    this.ort = ort;
    this.session = session;
    this.config = config;
  }

  emptyPast() {
    const { n_layer, n_head, head_dim } = this.config;
    return new this.ort.Tensor("float32", new Float32Array(0), [n_layer, 2, 1, n_head, 0, head_dim]);
  }

  // the last position's logits, and the cache grown by ids.length positions
  async step(ids, past) {
    const input = new this.ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
    const { logits, present } = await this.session.run({ input_ids: input, past });
    const vocab = this.config.vocab_size;
    return { logits: logits.data.slice((ids.length - 1) * vocab, ids.length * vocab), past: present };
  }

  // yields token ids until maxNewTokens, the end-of-text token, or shouldStop()
  async *generate(promptIds, settings, shouldStop = () => false) {
    const blockSize = this.config.block_size;
    const random = seededRandom(settings.seed ?? Math.floor(Math.random() * 2 ** 32));
    let context = promptIds.slice(-blockSize);
    let { logits, past } = await this.step(context, this.emptyPast());
    for (let i = 0; i < settings.maxNewTokens && !shouldStop(); i++) {
      const token = sampleNext(logits, settings, random);
      if (token === this.config.eot_id) return;
      yield token;
      context.push(token);
      if (context.length > blockSize) {
        context = context.slice(-(blockSize - Math.floor(blockSize / 4)));
        ({ logits, past } = await this.step(context, this.emptyPast()));
      } else {
        ({ logits, past } = await this.step([token], past));
      }
    }
  }
}
