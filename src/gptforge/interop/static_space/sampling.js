// Choosing the next token from the last position's logits, as gptforge's sample_next does: greedy at
// temperature 0; otherwise temperature, then top-k, then top-p (nucleus), then a draw from a seeded generator.

// mulberry32: a small 32-bit generator, so that a seed repeats a sample in any browser
export function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export function sampleNext(logits, { temperature, topK, topP }, random) {
  if (temperature === 0) return argmax(logits);
  const max = logits[argmax(logits)];
  // (token, scaled logit), most likely first
  let candidates = Array.from(logits, (logit, id) => [id, (logit - max) / temperature]);
  candidates.sort((a, b) => b[1] - a[1]);
  if (topK > 0 && topK < candidates.length) {
    const kth = candidates[topK - 1][1];
    candidates = candidates.filter(([, logit]) => logit >= kth); // ties with the k-th stay, as in torch
  }
  let weights = candidates.map(([, logit]) => Math.exp(logit));
  if (topP < 1) {
    const total = weights.reduce((sum, weight) => sum + weight, 0);
    let reached = 0;
    let keep = 0;
    while (keep < weights.length && reached < topP) reached += weights[keep++] / total; // the top token always stays
    candidates = candidates.slice(0, keep);
    weights = weights.slice(0, keep);
  }
  let draw = random() * weights.reduce((sum, weight) => sum + weight, 0);
  for (let i = 0; i < candidates.length; i++) {
    draw -= weights[i];
    if (draw < 0) return candidates[i][0];
  }
  return candidates[candidates.length - 1][0];
}
