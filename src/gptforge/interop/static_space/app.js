// The page: loads the exported model and tokenizer from this folder, and streams continuations.
import * as ort from "./vendor/ort.wasm.min.mjs";
import { CharTokenizer, GPT2Tokenizer } from "./tokenizers.js";
import { OnnxGPT } from "./generate.js";

ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href; // vendored: no CDN
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a static Space does not send

const $ = (id) => document.getElementById(id);
const fetchJson = async (name) => (await fetch(name)).json();
let model;
let tokenizer;
let stopping = false;

async function loadTokenizer(config) {
  if (config.tokenizer === "gpt2") return new GPT2Tokenizer(await (await fetch("gpt2.tiktoken")).text());
  return new CharTokenizer((await fetchJson("tokenizer.json")).chars);
}

function showFacts(facts, config) {
  const rows = [
    ["preset", facts.preset], ["parameters", facts.parameters?.toLocaleString("en")],
    ["steps trained", facts.steps?.toLocaleString("en")], ["tokens seen", facts.tokens_seen?.toLocaleString("en")],
    ["final training loss", facts.final_loss?.toFixed(4)],
    [`best loss (${facts.best_loss_split ?? "train"})`, facts.best_loss?.toFixed(4)],
    ["tokenizer", `${config.tokenizer} (${config.vocab_size.toLocaleString("en")} tokens)`],
    ["context length", `${config.block_size.toLocaleString("en")} tokens`],
  ];
  $("facts").replaceChildren(...rows.map(([name, value]) => {
    const row = document.createElement("tr");
    row.append(Object.assign(document.createElement("td"), { textContent: name }),
               Object.assign(document.createElement("td"), { textContent: value ?? "n/a" }));
    return row;
  }));
  $("title").textContent = `gptforge: ${facts.preset ?? "a GPT"}`;
}

async function loadModel(config, file) {
  document.body.dataset.state = "loading";
  $("generate").disabled = true;
  $("status").textContent = `loading ${file}…`;
  const started = performance.now();
  const session = await ort.InferenceSession.create(file, { executionProviders: ["wasm"] });
  model = new OnnxGPT(ort, session, config);
  $("status").textContent = `${file} loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  $("generate").disabled = false;
  document.body.dataset.state = "ready";
}

function settings() {
  const seed = $("seed").value.trim() === "" ? -1 : Number($("seed").value);
  return {
    maxNewTokens: Number($("max-new-tokens").value), temperature: Number($("temperature").value),
    topK: Number($("top-k").value), topP: Number($("top-p").value), seed: seed >= 0 ? seed : undefined,
  };
}

async function generate() {
  const prompt = $("prompt").value;
  let ids;
  try {
    ids = prompt ? tokenizer.encode(prompt) : [...model.config.start_ids];
  } catch (error) {
    $("status").textContent = error.message;
    return;
  }
  stopping = false;
  document.body.dataset.state = "generating";
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("output").textContent = prompt;
  const decoder = tokenizer.decoder();
  const started = performance.now();
  let firstToken;
  let count = 0;
  try {
    for await (const token of model.generate(ids, settings(), () => stopping)) {
      firstToken ??= performance.now();
      count += 1;
      $("output").textContent += decoder.push(token);
    }
    $("output").textContent += decoder.flush();
    const done = performance.now();
    const rate = count > 1 ? (count - 1) / ((done - firstToken) / 1000) : 0;
    const stats = $("status").dataset;
    stats.firstTokenMs = firstToken ? (firstToken - started).toFixed(1) : "";
    stats.tokensPerSecond = rate.toFixed(2);
    stats.tokens = count;
    $("status").textContent = `${count} tokens; first after ${stats.firstTokenMs} ms, then ` +
                              `${stats.tokensPerSecond} tokens/s (this browser, one thread)`;
  } catch (error) {
    $("status").textContent = `error: ${error.message}`;
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    document.body.dataset.state = "done";
  }
}

async function main() {
  for (const id of ["max-new-tokens", "temperature", "top-k", "top-p"]) {
    const show = () => { $(`${id}-value`).textContent = $(id).value; };
    $(id).addEventListener("input", show);
    show();
  }
  const [config, facts] = await Promise.all([fetchJson("onnx_config.json"), fetchJson("facts.json")]);
  showFacts(facts, config);
  $("top-k").max = config.vocab_size;
  tokenizer = await loadTokenizer(config);
  const files = config.model_files;
  const wanted = new URLSearchParams(location.search).get("model");
  $("model-file").replaceChildren(...files.map((file) => new Option(file, file)));
  $("model-file").value = files.includes(wanted) ? wanted : files[0];
  $("model-file").addEventListener("change", () => loadModel(config, $("model-file").value));
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => { stopping = true; });
  await loadModel(config, $("model-file").value);
}

main().catch((error) => {
  $("status").textContent = `error: ${error.message}`;
  document.body.dataset.state = "failed";
});
