// TinyBeauty in the browser: find the face, crop it as in training, run the exported ONNX with
// onnxruntime-web (WASM) and paste the change back into the full frame, for a photo or the webcam.
//
// It opens ready: the style menu lists what serve.py offers in models.json (the shipped styles of
// weights/styles/, deploy/styles.py), and the bundled sample photo (sample.jpg, also from serve.py) is
// shown made up as soon as the model has loaded; a chosen photo or the webcam replaces it. Photos are
// decoded upright (their EXIF orientation applied, as data/io.read_rgb does in Python).
//
// URL parameters: model=URL (an exported TinyBeauty ONNX, default the first entry of models.json, else
// models/tinybeauty_fp32.onnx), photo=URL (the photo shown on load, default sample.jpg; photo=none: none),
// threads=N (WASM threads; more than 1 needs the cross-origin isolation that serve.py sets up; default
// one core fewer than the machine has, at most 4), backend=auto|wasm|webgpu (auto: WebGPU where the
// browser has a GPU adapter that is not a software fallback, else WASM), framing=oval (skip the face
// detector: a fixed centre crop with an oval guide).
//
// The pipeline is photo mode's (tinybeauty_inference.py --full-photo, data/face_align.py), in the
// same pixel conventions, so tests/test_web.py can redo it in Python from what the page exposes on
// window.tinybeauty:
// - framing: the detector's box grown by MARGIN on every side, turned so the eye line is level;
//   the photo -> crop affine is cv2's (pixel indices, getRotationMatrix2D);
// - the model sees the crop as RGB planes in [-1, 1]; its output is rounded to uint8;
// - paste-back adds (output - crop) warped back bilinearly under FaceAligner's feathered mask.
// Makeup per region (the lips, eyes and skin sliders; deploy/regions.py in Python): the change is scaled pixel by
// pixel, clamp(crop + I(x) x change). Python parses the crop with FaceMesh; the page has only the face detector's
// six keypoints (MediaPipe Tasks' FaceLandmarker needs face_landmarker.task, which neither the npm package nor the
// mediapipe wheel ships), so it places the regions as feathered ellipses about the eye and mouth keypoints, sized
// from FaceMesh parses of the 16 sample faces. Equal sliders use the single intensity, as before, bit for bit.
import { FaceDetector, FilesetResolver } from "@mediapipe/tasks-vision";

const params = new URLSearchParams(location.search);
// fp32: in WASM about 3x faster than the int8 export (bench/results/web_bench.json), and exact.
const DEFAULT_MODEL = "models/tinybeauty_fp32.onnx";
const SAMPLE_PHOTO = "sample.jpg"; // serve.py serves a bundled face here (data/samples/faces/)
// The short-range BlazeFace from the mediapipe 0.10.21 wheel (scripts/setup_web.sh copies it here).
// Photo mode tries the full-range model first, but MediaPipe Tasks' face detector decodes only the
// short-range model's 896 anchors (the full-range one stops it: "2304 vs. 896"); short range is the
// selfie and portrait case (faces within ~2 m).
const DETECTOR_MODEL = "models/face_detection_short_range.tflite";
const MARGIN = 0.4; // data/face_align.py: crop side = 1.8 x the detector box, the seed pairs' framing
const FEATHER = 0.08; // FaceAligner.paste_back's default
const MIN_CONFIDENCE = 0.5; // FaceAligner's default
// The short-range box sits lower and is smaller than the full-range one photo mode frames with: on the
// 16 sample faces its centre is 0.05 x the full-range side lower (std 0.02) and its side 0.945 x as
// long (std 0.05). Undone here, so the crop is framed as the training faces were.
const FULL_RANGE_SIDE = 1 / 0.945;
const FULL_RANGE_SHIFT_Y = -0.05;
const MAX_FACES = 4;
const OVAL_CROP = 0.9; // framing=oval: the crop is the centre square of 0.9 x the frame's short side
const REGIONS = ["lips", "eyes", "skin"]; // deploy/regions.py's names; skin is the rest of the face and the background
// Where the keypoints sit in an aligned crop (fractions of its side; the mean over the 16 sample faces), for
// framing=oval, which has no detector.
const CROP_KEYPOINTS = { rightEye: [0.391, 0.415], leftEye: [0.604, 0.415], mouth: [0.499, 0.645] };
// The regions as ellipses in units of the eye distance d, about a keypoint moved down by dy: FaceMesh's lips
// (makeup label 2) and eye area (label 1: lids, liner, brows) span these on the sample faces, plus 10%.
const LIPS_ELLIPSE = { dy: 0.04, a: 0.44, b: 0.18 };
const EYE_ELLIPSE = { dy: -0.14, a: 0.41, b: 0.25 };
// A region's weight falls from 1 on its ellipse to 0 this far outside it (eye distances along the shorter radius; 8
// pixels of a 256 crop, as deploy/regions.py's feather).
const REGION_FEATHER = 0.15;

const $ = (id) => document.getElementById(id);
const before = $("before");
const after = $("after");
const overlay = $("overlay");
const video = $("video");
const context = (canvas) => canvas.getContext("2d", { willReadFrequently: true });
const cropCanvas = document.createElement("canvas");

// What the page did last, for people (the status and timing lines) and for tests (window.tinybeauty).
const state = {
  ready: false,
  error: null,
  model: null,
  size: 256,
  hasIntensity: false, // `intensity` fed to the model; otherwise the page blends with the same formula
  threads: 1,
  backend: "wasm", // "wasm" or "webgpu": where the model runs
  models: [], // the style menu: [{name, url}] from models.json
  sample: null, // the photo shown on load: null while loading, then "shown" or "none"
  framing: params.get("framing") === "oval" ? "oval" : "detector",
  detectorError: null, // why the page fell back to the oval guide, if it did
  intensity: 1, // the all-regions slider
  regions: { lips: 1, eyes: 1, skin: 1 }, // the per-region sliders; equal values: the single intensity
  threadsWhy: "", // why this many WASM threads
  source: null, // "sample:NAME", "upload:NAME" or "webcam"
  runs: 0,
  last: null, // {source, intensity, faces: [{box, angle, score, matrix}], inferenceMs, frameMs, ...}
  webcamMs: [], // the webcam's last 30 frame times, for the running median
};
let ort = null; // onnxruntime-web: its WASM build, or its WebGPU build where a GPU is used
let session = null;
let detector = null;
let detectorMode = "IMAGE";
let webcamStream = null;
let stillFaces = null; // a still photo's faces, kept while only the intensity changes
let running = false;
let rerunWanted = false;
let frames = Promise.resolve(); // one frame at a time: a photo chosen during a webcam frame waits for it

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// ---------------------------------------------------------------------------------------------
// Loading: the model list, the ONNX session, the face detector.

async function listModels() {
  let listed = [];
  try {
    const response = await fetch("models.json"); // written by serve.py; absent under a plain http.server
    if (response.ok) listed = await response.json();
  } catch {
    listed = [];
  }
  const wanted = params.get("model") || (listed[0] && listed[0].url) || DEFAULT_MODEL;
  if (!listed.some((m) => m.url === wanted)) listed.push({ name: wanted.split("/").pop(), url: wanted });
  state.models = listed;
  const select = $("model");
  for (const { name, url } of listed) select.add(new Option(name, url, false, url === wanted));
  // Another style: a new session, then the frame on screen again (the webcam goes on with it).
  select.addEventListener("change", () => switchModel(select.value).catch(fail));
  return wanted;
}

async function chooseBackend() {
  // WebGPU where the browser offers a real GPU; a software adapter (SwiftShader) is slower than WASM.
  const wanted = params.get("backend") || "auto";
  if (wanted === "wasm" || !navigator.gpu) return "wasm";
  try {
    const adapter = await navigator.gpu.requestAdapter();
    const software = !adapter || adapter.isFallbackAdapter || adapter.info?.isFallbackAdapter
      || adapter.info?.architecture === "swiftshader";
    return adapter && (wanted === "webgpu" || !software) ? "webgpu" : "wasm";
  } catch {
    return "wasm";
  }
}

async function initRuntime() {
  state.backend = await chooseBackend();
  ort = await import(state.backend === "webgpu" ? "onnxruntime-web/webgpu" : "onnxruntime-web");
  // Absolute: ORT resolves a relative wasmPaths against its own script, not the page.
  ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", document.baseURI).href;
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages (serve.py).
  // One core is left to the page's own work (detection, paste-back) and the browser's: on the 2 loaded
  // cores this was measured, 2 WASM threads ran the model slower than 1 (bench/results/web_bench.json).
  // Isolated, the page takes at least 2 threads (up to 4) even on 2 cores, where that was slower than 1 under load:
  // on an idle phone or laptop the second thread pays. threads=1 in the URL asks for one.
  const cores = navigator.hardwareConcurrency || 1;
  const asked = Number(params.get("threads"));
  if (!self.crossOriginIsolated) {
    state.threads = 1;
    state.threadsWhy = "not cross-origin isolated: no SharedArrayBuffer (serve with web/serve.py)";
  } else if (asked > 0) {
    state.threads = asked;
    state.threadsWhy = "threads= in the URL";
  } else {
    state.threads = Math.min(4, Math.max(2, cores - 1));
    state.threadsWhy = `cross-origin isolated, ${cores} cores`;
  }
  ort.env.wasm.numThreads = state.threads; // read once, when the first session starts
}

async function loadModel(url) {
  const providers = state.backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"];
  const next = await ort.InferenceSession.create(url, { executionProviders: providers,
    graphOptimizationLevel: "all" });
  const shape = next.inputMetadata?.find((m) => m.name === "source")?.shape;
  const size = shape && Number.isInteger(shape[2]) ? shape[2] : 256;
  // tinybeauty_export.py's `intensity` is an input with a default (it is also an initializer), and
  // onnxruntime-web accepts feeds only for the inputs it lists, which leave such inputs out ("invalid
  // input 'intensity'", 1.30). So the page blends in JavaScript, with the graph's formula; a model
  // whose `intensity` is a plain input gets it fed instead.
  const zeros = new Float32Array(3 * size * size);
  await next.run({ source: new ort.Tensor("float32", zeros, [1, 3, size, size]) }); // warm-up
  const previous = session;
  session = next;
  state.size = size;
  cropCanvas.width = cropCanvas.height = size;
  state.hasIntensity = next.inputNames.includes("intensity");
  state.model = url;
  if (previous) await previous.release();
}

async function switchModel(url) {
  setStatus(`loading ${url.split("/").pop()}…`);
  params.set("model", url);
  history.replaceState(null, "", `?${params}`); // the URL says which style, for a reload or a link
  // Between frames: a frame in flight finishes with the old session, the next one runs the new.
  frames = frames.catch(() => {}).then(() => loadModel(url));
  await frames;
  if (state.source && state.source !== "webcam") await rerun();
}

async function loadDetector() {
  if (state.framing === "oval") return;
  try {
    const wasm = new URL("node_modules/@mediapipe/tasks-vision/wasm", document.baseURI).href;
    const vision = await FilesetResolver.forVisionTasks(wasm);
    detector = await FaceDetector.createFromOptions(vision, {
      baseOptions: { modelAssetPath: DETECTOR_MODEL, delegate: "CPU" },
      runningMode: "IMAGE",
      minDetectionConfidence: MIN_CONFIDENCE,
    });
  } catch (err) {
    console.warn("face detector unavailable, using the oval guide:", err);
    state.framing = "oval";
    state.detectorError = String(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Framing: the photo -> crop affine of FaceAligner.crop_matrix.

function cropMatrix(cx, cy, side, angleDeg) {
  // cv2.getRotationMatrix2D((cx, cy), angle, scale), then the centre moved to the crop's centre.
  const scale = state.size / side;
  const a = (angleDeg * Math.PI) / 180;
  const alpha = scale * Math.cos(a);
  const beta = scale * Math.sin(a);
  const half = state.size / 2;
  return [
    alpha, beta, (1 - alpha) * cx - beta * cy + half - cx,
    -beta, alpha, beta * cx + (1 - alpha) * cy + half - cy,
  ];
}

function invert([a, b, c, d, e, f]) {
  const det = a * e - b * d;
  return [e / det, -b / det, (b * f - c * e) / det, -d / det, a / det, (c * d - a * f) / det];
}

function findFaces(timestamp) {
  const width = before.width;
  const height = before.height;
  if (state.framing === "oval") {
    const side = OVAL_CROP * Math.min(width, height);
    const box = side / (1 + 2 * MARGIN);
    return [{ box: [(width - box) / 2, (height - box) / 2, (width + box) / 2, (height + box) / 2], angle: 0,
      score: 0, matrix: cropMatrix(width / 2, height / 2, side, 0), keypoints: null }];
  }
  const mode = timestamp === undefined ? "IMAGE" : "VIDEO";
  if (mode !== detectorMode) {
    detector.setOptions({ runningMode: mode });
    detectorMode = mode;
  }
  const result = mode === "VIDEO" ? detector.detectForVideo(before, timestamp) : detector.detect(before);
  const faces = [];
  for (const detection of result.detections) {
    const { originX, originY, width: w, height: h } = detection.boundingBox;
    const [right, left] = detection.keypoints; // the subject's right eye, then left eye (normalised)
    // The eye line from the detector's keypoints (photo mode refines it with FaceMesh).
    const angle = (Math.atan2((left.y - right.y) * height, (left.x - right.x) * width) * 180) / Math.PI;
    const boxSide = Math.max(w, h) * FULL_RANGE_SIDE; // the full-range box, as photo mode's
    const cx = originX + w / 2;
    const cy = originY + h / 2 + FULL_RANGE_SHIFT_Y * boxSide;
    const half = boxSide / 2;
    const matrix = cropMatrix(cx, cy, boxSide * (1 + 2 * MARGIN), angle);
    // The eyes and the mouth (keypoints 0, 1, 3) in crop pixels, for the regions' ellipses.
    const [a, b, c, d, e, f] = matrix;
    const inCrop = (p) => [a * p.x * width + b * p.y * height + c, d * p.x * width + e * p.y * height + f];
    const keypoints = { rightEye: inCrop(right), leftEye: inCrop(left), mouth: inCrop(detection.keypoints[3]) };
    faces.push({ box: [cx - half, cy - half, cx + half, cy + half], angle, score: detection.categories[0]?.score ?? 0,
      matrix, keypoints });
  }
  faces.sort((p, q) => (q.box[2] - q.box[0]) * (q.box[3] - q.box[1]) - (p.box[2] - p.box[0]) * (p.box[3] - p.box[1]));
  return faces.slice(0, MAX_FACES);
}

function cropFace(matrix) {
  // Canvas transforms map continuous coordinates (a pixel's centre is at +0.5), cv2's map pixel
  // indices: the same affine, shifted by half a pixel on both sides.
  const [a, b, c, d, e, f] = matrix;
  const ctx = context(cropCanvas);
  const width = before.width;
  const height = before.height;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000"; // opaque: the crop's pixels read back as drawn (no premultiplied alpha)
  ctx.fillRect(0, 0, state.size, state.size);
  ctx.imageSmoothingQuality = "high"; // smooth when shrinking a large face (photo mode asks cv2 for INTER_AREA)
  // Where the crop reaches past the frame, mirrored copies of the frame fill it, as photo mode's
  // BORDER_REFLECT_101 does (here the edge pixel is repeated once): no black band cuts a face near the edge.
  const inverse = invert(matrix);
  const xs = [0, state.size].flatMap((u) => [0, state.size].map((v) => inverse[0] * u + inverse[1] * v + inverse[2]));
  const ys = [0, state.size].flatMap((u) => [0, state.size].map((v) => inverse[3] * u + inverse[4] * v + inverse[5]));
  for (const i of [-1, 0, 1]) {
    for (const j of [-1, 0, 1]) {
      const outside = (i < 0 && Math.min(...xs) >= 0) || (i > 0 && Math.max(...xs) <= width)
        || (j < 0 && Math.min(...ys) >= 0) || (j > 0 && Math.max(...ys) <= height);
      if (outside) continue;
      ctx.setTransform(a, d, b, e, c + 0.5 - 0.5 * (a + b), f + 0.5 - 0.5 * (d + e));
      ctx.transform(i === 0 ? 1 : -1, 0, 0, j === 0 ? 1 : -1, i > 0 ? 2 * width : 0, j > 0 ? 2 * height : 0);
      ctx.drawImage(before, 0, 0);
    }
  }
  return ctx.getImageData(0, 0, state.size, state.size);
}

// ---------------------------------------------------------------------------------------------
// The model and the paste-back.

let modelSource = null; // runModel's input planes and output pixels, reused frame to frame
let modelMade = null;

function uniformLevel(regions) {
  // The single intensity when every region has the same (no map needed), else null.
  return regions.lips === regions.eyes && regions.eyes === regions.skin ? regions.lips : null;
}

function intensityMap(face, regions, size) {
  // I(x) = w_lips x lips + w_eyes x eyes + (1 - w_lips - w_eyes) x skin over the crop, (S x S) Float32Array, or
  // null when the regions are equal. The weights are 1 inside each ellipse and fall to 0 with a cosine ramp.
  if (uniformLevel(regions) !== null) return null;
  const points = face.keypoints || Object.fromEntries(Object.entries(CROP_KEYPOINTS).map(([k, [x, y]]) => [k,
    [x * size, y * size]]));
  const d = Math.hypot(points.leftEye[0] - points.rightEye[0], points.leftEye[1] - points.rightEye[1]);
  const ellipses = [
    { region: "lips", at: points.mouth, ...LIPS_ELLIPSE },
    { region: "eyes", at: points.rightEye, ...EYE_ELLIPSE },
    { region: "eyes", at: points.leftEye, ...EYE_ELLIPSE },
  ];
  const map = new Float32Array(size * size);
  const { lips, eyes, skin } = regions;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let wLips = 0;
      let wEyes = 0;
      for (const { region, at, dy, a, b } of ellipses) {
        const r = Math.hypot((x - at[0]) / (a * d), (y - at[1] - dy * d) / (b * d));
        const t = Math.min(1, Math.max(0, ((r - 1) * Math.min(a, b)) / REGION_FEATHER));
        const w = 0.5 + 0.5 * Math.cos(Math.PI * t);
        if (region === "lips") wLips = Math.max(wLips, w);
        else wEyes = Math.max(wEyes, w);
      }
      const total = wLips + wEyes;
      if (total > 1) {
        wLips /= total;
        wEyes /= total;
      }
      map[y * size + x] = skin + wLips * (lips - skin) + wEyes * (eyes - skin);
    }
  }
  return map;
}

async function runModel(crop, intensity, map = null) {
  const size = state.size;
  const n = size * size;
  if (!modelSource || modelSource.length !== 3 * n) {
    modelSource = new Float32Array(3 * n);
    modelMade = new ImageData(size, size);
  }
  const source = modelSource; // (1, 3, S, S) RGB planes in [-1, 1], as common.from_uint8
  const pixels = crop.data;
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    source[i] = pixels[j] / 127.5 - 1;
    source[n + i] = pixels[j + 1] / 127.5 - 1;
    source[2 * n + i] = pixels[j + 2] / 127.5 - 1;
  }
  const feeds = { source: new ort.Tensor("float32", source, [1, 3, size, size]) };
  // Under a per-region map the model runs at 1 and the map scales its change here.
  const level = map ? 1 : intensity;
  if (state.hasIntensity) feeds.intensity = new ort.Tensor("float32", new Float32Array([level]), []);
  const start = performance.now();
  const output = (await session.run(feeds))[session.outputNames[0]].data;
  const inferenceMs = performance.now() - start;
  // Otherwise the graph's blend here: clamp(source + k x (output - source)); k = 0 gives the source
  // back exactly, k = 1 the output (the float32 difference is exact in float64). The clamp to [-1, 1]
  // and common.to_uint8's rounding (half to even, as torch.round) are the Uint8ClampedArray's own.
  // A per-region map gives k pixel by pixel.
  const k0 = state.hasIntensity ? 1 : level;
  const made = modelMade.data;
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const k = map ? map[i] : k0;
    const r = source[i];
    const g = source[n + i];
    const b = source[2 * n + i];
    made[j] = (r + k * (output[i] - r) + 1) * 127.5;
    made[j + 1] = (g + k * (output[n + i] - g) + 1) * 127.5;
    made[j + 2] = (b + k * (output[2 * n + i] - b) + 1) * 127.5;
    made[j + 3] = 255;
  }
  return { made: modelMade, inferenceMs };
}

let featherCache = null;
let pasteTexels = null; // pasteBack's (S, S, 4) feather-and-change buffer, reused frame to frame
function featherMask(size) {
  // data/face_align.feather_mask: 1 inside, a cosine ramp to 0 over the outer FEATHER x size pixels.
  if (featherCache && featherCache.size === size) return featherCache.mask;
  const ramp = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const r = Math.min(1, Math.max(0, (Math.min(i, size - 1 - i) + 0.5) / Math.max(FEATHER * size, 1e-6)));
    ramp[i] = 0.5 - 0.5 * Math.cos(Math.PI * r);
  }
  const mask = new Float32Array(size * size);
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) mask[y * size + x] = Math.min(ramp[y], ramp[x]);
  featherCache = { size, mask };
  return mask;
}

function pasteBack(ctx, crop, made, matrix) {
  // FaceAligner.paste_back(mode="residual"): the change the model made, warped back into the frame
  // (bilinear, zero outside the crop, as cv2.warpAffine) and added under the warped feather mask,
  // so pixels the model left alone come back exactly.
  const size = state.size;
  const inverse = invert(matrix);
  const corners = [[0, 0], [size, 0], [0, size], [size, size]].map(([u, v]) => [
    inverse[0] * u + inverse[1] * v + inverse[2], inverse[3] * u + inverse[4] * v + inverse[5]]);
  const x0 = Math.max(Math.floor(Math.min(...corners.map((p) => p[0]))), 0);
  const y0 = Math.max(Math.floor(Math.min(...corners.map((p) => p[1]))), 0);
  const x1 = Math.min(Math.ceil(Math.max(...corners.map((p) => p[0]))) + 1, before.width);
  const y1 = Math.min(Math.ceil(Math.max(...corners.map((p) => p[1]))) + 1, before.height);
  if (x1 <= x0 || y1 <= y0) return;
  const n = size * size;
  // Per crop pixel, its feather weight and the change the model made there, side by side (one cache line
  // per tap): [mask, R, G, B] in grey levels.
  if (!pasteTexels || pasteTexels.length !== 4 * n) pasteTexels = new Float32Array(4 * n);
  const texels = pasteTexels;
  const mask = featherMask(size);
  const madeData = made.data;
  const cropData = crop.data;
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    texels[j] = mask[i];
    texels[j + 1] = madeData[j] - cropData[j];
    texels[j + 2] = madeData[j + 1] - cropData[j + 1];
    texels[j + 3] = madeData[j + 2] - cropData[j + 2];
  }
  const width = x1 - x0;
  const roi = ctx.getImageData(x0, y0, width, y1 - y0);
  const data = roi.data;
  const [a, b, c, d, e, f] = matrix;
  const row = 4 * size;
  // The four bilinear taps unrolled, in the order (0,0) (1,0) (0,1) (1,1), with no allocation per pixel: this
  // loop is most of the frame's JavaScript (a 640x480 face: 0.2 M pixels). Inside the crop every tap exists
  // and a tap of weight 0 adds exactly 0; at its edge the taps outside are left out, as cv2.warpAffine does.
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const u = a * x + b * y + c; // where this frame pixel falls in the crop
      const v = d * x + e * y + f;
      if (u <= -1 || v <= -1 || u >= size || v >= size) continue;
      const ui = Math.floor(u);
      const vi = Math.floor(v);
      const fu = u - ui;
      const fv = v - vi;
      const w00 = (1 - fu) * (1 - fv);
      const w10 = fu * (1 - fv);
      const w01 = (1 - fu) * fv;
      const w11 = fu * fv;
      let alpha;
      let s0;
      let s1;
      let s2;
      if (ui >= 0 && vi >= 0 && ui < size - 1 && vi < size - 1) {
        const k = 4 * (vi * size + ui);
        const l = k + row;
        alpha = w00 * texels[k] + w10 * texels[k + 4] + w01 * texels[l] + w11 * texels[l + 4];
        s0 = w00 * texels[k + 1] + w10 * texels[k + 5] + w01 * texels[l + 1] + w11 * texels[l + 5];
        s1 = w00 * texels[k + 2] + w10 * texels[k + 6] + w01 * texels[l + 2] + w11 * texels[l + 6];
        s2 = w00 * texels[k + 3] + w10 * texels[k + 7] + w01 * texels[l + 3] + w11 * texels[l + 7];
      } else {
        alpha = s0 = s1 = s2 = 0;
        for (const [du, dv, w] of [[0, 0, w00], [1, 0, w10], [0, 1, w01], [1, 1, w11]]) {
          const px = ui + du;
          const py = vi + dv;
          if (px < 0 || py < 0 || px >= size || py >= size || w === 0) continue;
          const k = 4 * (py * size + px);
          alpha += w * texels[k];
          s0 += w * texels[k + 1];
          s1 += w * texels[k + 2];
          s2 += w * texels[k + 3];
        }
      }
      if (alpha === 0) continue;
      const o = 4 * ((y - y0) * width + (x - x0));
      data[o] = Math.round(data[o] + s0 * alpha);
      data[o + 1] = Math.round(data[o + 1] + s1 * alpha);
      data[o + 2] = Math.round(data[o + 2] + s2 * alpha);
    }
  }
  ctx.putImageData(roi, x0, y0);
}

// ---------------------------------------------------------------------------------------------
// One frame: detect, crop, run, paste back, show.

function processFrame(timestamp) {
  frames = frames.catch(() => {}).then(() => runFrame(timestamp));
  return frames;
}

async function runFrame(timestamp) {
  // The frame's own time, in parts: detection, crop, model (inferenceMs: session.run alone; modelMs with
  // the planes in and the pixels out), paste-back. frameMs is all of it, the overlay included.
  const start = performance.now();
  const { source, model } = state; // what this frame is of, whatever changes while it runs
  const regions = { ...state.regions };
  const intensity = uniformLevel(regions); // null: per region
  const still = timestamp === undefined;
  const faces = still && stillFaces ? stillFaces : findFaces(timestamp);
  if (still) stillFaces = faces;
  const detectMs = performance.now() - start;
  const ctx = context(after);
  ctx.drawImage(before, 0, 0);
  const parts = { cropMs: 0, inferenceMs: 0, modelMs: 0, pasteMs: 0 };
  for (const [index, face] of faces.entries()) {
    let mark = performance.now();
    const crop = cropFace(face.matrix);
    parts.cropMs += performance.now() - mark;
    mark = performance.now();
    const map = intensityMap(face, regions, state.size);
    const { made, inferenceMs } = await runModel(crop, intensity, map);
    parts.modelMs += performance.now() - mark;
    parts.inferenceMs += inferenceMs;
    mark = performance.now();
    pasteBack(ctx, crop, made, face.matrix);
    parts.pasteMs += performance.now() - mark;
    if (index === 0) {
      context($("crop-before")).putImageData(crop, 0, 0);
      context($("crop-after")).putImageData(made, 0, 0);
    }
  }
  drawOverlay(faces);
  const frameMs = performance.now() - start;
  state.runs += 1;
  state.last = { run: state.runs, source, intensity, regions, model, faces, detectMs, ...parts, frameMs,
    width: before.width, height: before.height };
  showTiming(state.last);
}

function drawOverlay(faces) {
  if (overlay.width !== before.width || overlay.height !== before.height) {
    overlay.width = before.width; // resizing clears it, and allocates it anew: only when the frame's size changes
    overlay.height = before.height;
  }
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.lineWidth = Math.max(2, before.width / 300);
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box;
    ctx.strokeStyle = state.framing === "oval" ? "#fffc" : "#6cf8";
    ctx.beginPath();
    if (state.framing === "oval") {
      // The guide: put the face in the oval (the detector box a face of this size would get).
      ctx.ellipse((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, ((y1 - y0) / 2) * 1.25, 0, 0, 2 * Math.PI);
    } else {
      ctx.rect(x0, y0, x1 - x0, y1 - y0);
    }
    ctx.stroke();
  }
}

function showTiming({ source, intensity, regions, faces, inferenceMs, frameMs }) {
  const plural = state.threads > 1 ? "s" : "";
  const where = state.backend === "webgpu" ? "WebGPU" : `WASM, ${state.threads} thread${plural} (${state.threadsWhy})`;
  let text = `model ${inferenceMs.toFixed(1)} ms · frame ${frameMs.toFixed(1)} ms · ${where}`;
  if (source === "webcam") {
    const recent = state.webcamMs;
    recent.push(frameMs);
    if (recent.length > 30) recent.shift();
    const median = [...recent].sort((p, q) => p - q)[Math.floor(recent.length / 2)];
    text += ` · median of the last ${recent.length} frames ${median.toFixed(1)} ms`;
  }
  $("timing").textContent = text;
  const n = faces.length;
  const found = state.framing === "oval" ? "oval guide (fixed crop)" : `${n} face${n === 1 ? "" : "s"} found`;
  const listed = state.models.find((m) => m.url === state.model);
  const model = listed ? listed.name : state.model.split("/").pop();
  const shown = source.startsWith("sample:") ? "sample photo" : source.replace(/^upload:/, "");
  const levels = intensity !== null ? `intensity ${intensity.toFixed(2)}`
    : REGIONS.map((name) => `${name} ${regions[name].toFixed(2)}`).join(" · ");
  setStatus(`${shown}: ${found} · ${model} · ${levels}`);
}

async function rerun() {
  // Still photos: one frame at a time; a slider move during a run asks for one more run after it.
  if (running) {
    rerunWanted = true;
    return;
  }
  running = true;
  try {
    do {
      rerunWanted = false;
      await processFrame();
    } while (rerunWanted);
  } catch (err) {
    fail(err);
  } finally {
    running = false;
  }
}

function showFrame(width, height) {
  for (const canvas of [before, after]) {
    canvas.width = width;
    canvas.height = height;
  }
  $("viewer").style.setProperty("--aspect", width / height);
  $("viewer").hidden = false;
}

async function showPhoto(blob, source) {
  stopWebcam();
  // Upright, as a photo viewer shows it: the EXIF orientation applied (the default in current browsers,
  // asked for here by name).
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  showFrame(bitmap.width, bitmap.height);
  context(before).drawImage(bitmap, 0, 0);
  bitmap.close();
  state.source = source;
  stillFaces = null;
  await rerun();
}

async function openPhoto(file) {
  $("credit").hidden = true;
  await showPhoto(file, `upload:${file.name}`);
}

async function openSample() {
  // The bundled sample, made up as soon as the page is ready; none under a plain http.server.
  const url = params.get("photo") || SAMPLE_PHOTO;
  const response = url === "none" ? null : await fetch(url).catch(() => null);
  if (!response?.ok) {
    state.sample = "none";
    return;
  }
  await showPhoto(await response.blob(), `sample:${url.split("/").pop()}`);
  $("credit").hidden = url !== SAMPLE_PHOTO;
  state.sample = "shown";
}

async function startWebcam() {
  if (webcamStream) return stopWebcam();
  $("credit").hidden = true;
  // Browsers give the camera only to secure pages: https, or http://localhost on this device.
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("no camera access here: open the page over https or on localhost");
  }
  webcamStream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false });
  video.srcObject = webcamStream;
  await video.play();
  showFrame(video.videoWidth, video.videoHeight);
  state.source = "webcam";
  state.webcamMs = [];
  $("webcam").textContent = "Stop webcam";
  const stream = webcamStream;
  while (webcamStream === stream) {
    if (video.videoWidth && (video.videoWidth !== before.width || video.videoHeight !== before.height)) {
      showFrame(video.videoWidth, video.videoHeight); // a phone turned sideways
    }
    context(before).drawImage(video, 0, 0, before.width, before.height);
    await processFrame(performance.now());
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}

function stopWebcam() {
  if (!webcamStream) return;
  for (const track of webcamStream.getTracks()) track.stop();
  webcamStream = null;
  $("webcam").textContent = "Webcam";
}

async function benchmark(frames = 30) {
  // Times `frames` frames of the photo on screen as the webcam would run them (detection each time);
  // each part's times, frame by frame (bench/web_bench.py pools them over its rounds).
  const times = { detectMs: [], cropMs: [], inferenceMs: [], modelMs: [], pasteMs: [], frameMs: [] };
  for (let i = 0; i < frames; i++) {
    await processFrame(performance.now());
    for (const key of Object.keys(times)) times[key].push(state.last[key]);
  }
  return times;
}

function fail(err) {
  console.error(err);
  state.error = String(err?.message || err);
  setStatus(state.error, true);
}

// ---------------------------------------------------------------------------------------------

function wireControls() {
  $("upload").addEventListener("change", (event) => {
    if (event.target.files[0]) openPhoto(event.target.files[0]).catch(fail);
  });
  $("webcam").addEventListener("click", () => startWebcam().catch((err) => {
    stopWebcam();
    fail(err);
  }));
  const showLevel = (name, value) => {
    $(name).value = value;
    $(`${name}-value`).textContent = value.toFixed(2);
  };
  // The all-regions slider sets the three; a region's slider sets its own (the all slider then shows their mean).
  $("intensity").addEventListener("input", (event) => {
    state.intensity = Number(event.target.value);
    $("intensity-value").textContent = state.intensity.toFixed(2);
    for (const name of REGIONS) {
      state.regions[name] = state.intensity;
      showLevel(name, state.intensity);
    }
    if (state.source && state.source !== "webcam") rerun();
  });
  for (const name of REGIONS) {
    $(name).addEventListener("input", (event) => {
      state.regions[name] = Number(event.target.value);
      $(`${name}-value`).textContent = state.regions[name].toFixed(2);
      const uniform = uniformLevel(state.regions);
      state.intensity = uniform ?? REGIONS.reduce((sum, r) => sum + state.regions[r], 0) / REGIONS.length;
      $("intensity").value = state.intensity;
      $("intensity-value").textContent = uniform === null ? "mixed" : state.intensity.toFixed(2);
      if (state.source && state.source !== "webcam") rerun();
    });
  }
  const setSplit = (percent) => {
    $("stage").style.setProperty("--split", `${percent}%`);
    $("split").value = percent;
  };
  $("split").addEventListener("input", (event) => setSplit(event.target.value));
  $("stage").addEventListener("pointermove", (event) => {
    if (event.buttons !== 1) return;
    const rect = $("stage").getBoundingClientRect();
    setSplit(Math.min(100, Math.max(0, (100 * (event.clientX - rect.left)) / rect.width)));
  });
}

async function main() {
  wireControls();
  await initRuntime();
  const model = await listModels();
  setStatus(`loading ${model}…`);
  await Promise.all([loadModel(model), loadDetector()]);
  state.ready = true;
  const framing = state.framing === "oval" ? "oval guide (no face detector)" : "face detector";
  const name = model.split("/").pop();
  setStatus(`ready: ${name} (${state.size}x${state.size}), ${framing}. Choose a photo or the webcam.`);
  await openSample();
}

window.tinybeauty = { state, benchmark, ready: main().catch((err) => fail(`could not load: ${err?.message || err}`)) };
