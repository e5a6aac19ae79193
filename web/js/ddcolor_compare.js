// ComfyUI-DDColor: the before/after comparer inside the "DDColor Compare" node of the graph editor.
//
// After a run the node's UI output holds the two pictures it compared, saved as temp images
// (`before_images`, `after_images`, one entry per photo of the batch, both at the same size). This extension
// shows them in the node: drag across the picture to move the divider, click to switch between the whole
// before and the whole after, ‹ › (or the Up/Down keys) pick the photo of a batch. With the node selected the
// Left/Right keys move the divider (Shift: in big steps), Home/End put it at an edge, Space/Enter switches.
//
// Only long-standing frontend APIs are used (window.comfyAPI, registerExtension, onNodeCreated, onExecuted,
// addDOMWidget). Where one is missing the extension does nothing and the node works as before: its IMAGE output,
// shown by Preview Image, is the static before/after picture.

const NODE_TYPE = "DDColorCompare";
const WIDGET_NAME = "ddcolor_comparer";
const SMALL_STEP = 0.01;
const BIG_STEP = 0.1;
const DRAG_THRESHOLD_PX = 4;

const comfy = window.comfyAPI || {};
const app = comfy.app && comfy.app.app;
const api = comfy.api && comfy.api.api;

// English texts; the graph editor's language comes from locales/<lang>/main.json ("ddcolorCompare").
const TEXTS = {
  before: "before",
  after: "after",
  empty: "Run the workflow: before and after appear here.",
  tooltip:
    "Drag across the picture to move the divider (before on the left, after on the right). Click to switch " +
    "between the whole before and the whole after. With the node selected: ← → move the divider (Shift: " +
    "bigger steps), Home/End put it at an edge, Space switches, ↑ ↓ pick the photo of a batch.",
  previous: "previous photo (↑)",
  next: "next photo (↓)",
  photo: "photo",
  missing: "The pictures of the last run are gone (the server was restarted?); run the workflow again.",
};

function localeName() {
  const settings = app && app.ui && app.ui.settings;
  try {
    const chosen = settings && settings.getSettingValue && settings.getSettingValue("Comfy.Locale");
    if (chosen) return String(chosen);
  } catch (_) {
    // settings not ready: fall back to the browser's language
  }
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

const comparers = new Set(); // live comparers, redrawn once the translated texts have arrived

async function loadTexts() {
  if (!api) return;
  try {
    const all = api.getCustomNodesI18n ? await api.getCustomNodesI18n() : await (await api.fetchApi("/i18n")).json();
    const lang = localeName();
    const table = all && (all[lang] || all[lang.split("-")[0]]);
    const ours = table && table.ddcolorCompare;
    if (ours) for (const key of Object.keys(TEXTS)) if (typeof ours[key] === "string") TEXTS[key] = ours[key];
    for (const comparer of comparers) comparer.render();
  } catch (_) {
    // no /i18n route on this server: keep English
  }
}

const STYLE = `
.ddcolor-cmp { position: relative; display: flex; flex-direction: column; width: 100%; height: 100%;
  box-sizing: border-box; outline: none; user-select: none; font: 12px sans-serif; color: #ddd; }
.ddcolor-cmp:focus-visible { box-shadow: 0 0 0 2px #4a9eff inset; }
.ddcolor-cmp-stage { position: relative; flex: 1 1 auto; min-height: 0; overflow: hidden; cursor: ew-resize;
  touch-action: none; }
.ddcolor-cmp-frame { position: absolute; }
.ddcolor-cmp-frame img { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none;
  image-rendering: auto; }
.ddcolor-cmp-divider { position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px; background: #fff;
  box-shadow: 0 0 2px #000; pointer-events: none; }
.ddcolor-cmp-label { position: absolute; top: 4px; padding: 1px 5px; border-radius: 3px;
  background: rgba(0, 0, 0, 0.55); color: #fff; pointer-events: none; }
.ddcolor-cmp-narrow .ddcolor-cmp-label { visibility: hidden; }
.ddcolor-cmp-bar { display: flex; align-items: center; justify-content: center; gap: 8px; height: 22px;
  flex: 0 0 auto; }
.ddcolor-cmp-bar button { min-width: 26px; height: 20px; padding: 0 6px; border: 1px solid #555;
  border-radius: 4px; background: #333; color: #eee; cursor: pointer; }
.ddcolor-cmp-empty { margin: auto; padding: 6px; text-align: center; opacity: 0.75; }
`;

function addStyle() {
  if (document.getElementById("ddcolor-cmp-style")) return;
  const style = document.createElement("style");
  style.id = "ddcolor-cmp-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function el(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}

function viewURL(entry) {
  const query = new URLSearchParams({
    filename: entry.filename,
    subfolder: entry.subfolder || "",
    type: entry.type || "temp",
  });
  const path = `/view?${query}`;
  return api && api.apiURL ? api.apiURL(path) : `api${path}`;
}

function isTyping(target) {
  if (!target || !target.tagName) return false;
  const tag = target.tagName.toLowerCase();
  return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
}

class Comparer {
  constructor(node) {
    this.node = node;
    this.pairs = []; // [{before: url, after: url}]
    this.index = 0;
    this.position = 0.5; // divider: 0 = left edge, 1 = right edge
    this.show = "split"; // "split" | "before" | "after"
    this.natural = null; // [width, height] of the current pictures
    this.build();
  }

  build() {
    const root = (this.root = el("div", "ddcolor-cmp"));
    root.tabIndex = 0;
    root.setAttribute("role", "slider");
    root.setAttribute("aria-valuemin", "0");
    root.setAttribute("aria-valuemax", "100");
    root.dataset.ddcolor = "comparer";
    this.stage = el("div", "ddcolor-cmp-stage", root);
    this.frame = el("div", "ddcolor-cmp-frame", this.stage);
    this.afterImg = el("img", "ddcolor-cmp-after", this.frame);
    this.beforeImg = el("img", "ddcolor-cmp-before", this.frame);
    this.afterImg.alt = "";
    this.beforeImg.alt = "";
    this.divider = el("div", "ddcolor-cmp-divider", this.frame);
    this.beforeLabel = el("span", "ddcolor-cmp-label", this.frame);
    this.afterLabel = el("span", "ddcolor-cmp-label", this.frame);
    this.empty = el("div", "ddcolor-cmp-empty", this.stage);
    this.bar = el("div", "ddcolor-cmp-bar", root);
    this.prevButton = el("button", "ddcolor-cmp-prev", this.bar);
    this.counter = el("span", "ddcolor-cmp-counter", this.bar);
    this.nextButton = el("button", "ddcolor-cmp-next", this.bar);
    this.prevButton.textContent = "‹";
    this.nextButton.textContent = "›";
    this.prevButton.type = this.nextButton.type = "button";
    this.prevButton.addEventListener("click", (e) => this.step(-1, e));
    this.nextButton.addEventListener("click", (e) => this.step(1, e));
    for (const img of [this.afterImg, this.beforeImg]) {
      img.addEventListener("load", () => this.layout());
      img.addEventListener("error", () => this.onMissing());
    }
    this.stage.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.stage.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.stage.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.stage.addEventListener("pointercancel", () => (this.drag = null));
    root.addEventListener("keydown", (e) => this.onKey(e));
    if (window.ResizeObserver) {
      this.observer = new ResizeObserver(() => this.layout());
      this.observer.observe(this.stage);
    }
    this.render();
  }

  // --- data ----------------------------------------------------------------------------------------------
  setOutput(output) {
    const before = (output && output.before_images) || [];
    const after = (output && output.after_images) || [];
    const count = Math.min(before.length, after.length);
    this.pairs = [];
    for (let i = 0; i < count; i++) this.pairs.push({ before: viewURL(before[i]), after: viewURL(after[i]) });
    this.missing = false;
    this.index = Math.min(this.index, Math.max(0, count - 1));
    this.show = "split";
    this.natural = null;
    this.load();
  }

  load() {
    const pair = this.pairs[this.index];
    if (!pair) {
      this.render();
      return;
    }
    this.natural = null;
    this.beforeImg.src = pair.before;
    this.afterImg.src = pair.after;
    this.render();
  }

  onMissing() {
    this.missing = true;
    this.render();
  }

  // --- geometry ------------------------------------------------------------------------------------------
  layout() {
    const img = this.afterImg;
    if (img.naturalWidth && img.naturalHeight) this.natural = [img.naturalWidth, img.naturalHeight];
    if (!this.natural) return;
    // letterbox: the whole picture, aspect kept, centred in the stage (CSS pixels, before canvas zoom)
    const [w, h] = this.natural;
    const sw = this.stage.clientWidth;
    const sh = this.stage.clientHeight;
    if (!sw || !sh) return;
    const scale = Math.min(sw / w, sh / h);
    const fw = Math.max(1, Math.round(w * scale));
    const fh = Math.max(1, Math.round(h * scale));
    Object.assign(this.frame.style, {
      width: `${fw}px`,
      height: `${fh}px`,
      left: `${Math.floor((sw - fw) / 2)}px`,
      top: `${Math.floor((sh - fh) / 2)}px`,
    });
    this.root.classList.toggle("ddcolor-cmp-narrow", fw < 110); // no room for the two labels
    this.render();
  }

  positionFromEvent(e) {
    const rect = this.frame.getBoundingClientRect(); // includes the canvas zoom
    if (!rect.width) return this.position;
    return Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width));
  }

  // --- drawing -------------------------------------------------------------------------------------------
  render() {
    const has = this.pairs.length > 0 && !this.missing;
    const ready = has && !!this.natural;
    this.frame.style.display = ready ? "" : "none";
    this.empty.style.display = has ? "none" : "";
    this.empty.textContent = this.missing ? TEXTS.missing : TEXTS.empty;
    const pct = this.show === "before" ? 100 : this.show === "after" ? 0 : this.position * 100;
    this.beforeImg.style.clipPath = `inset(0 ${100 - pct}% 0 0)`;
    this.divider.style.left = `${pct}%`;
    this.divider.style.display = this.show === "split" ? "" : "none";
    this.beforeLabel.textContent = TEXTS.before;
    this.afterLabel.textContent = TEXTS.after;
    this.beforeLabel.style.left = "4px";
    this.afterLabel.style.right = "4px";
    this.beforeLabel.style.display = this.show === "after" ? "none" : "";
    this.afterLabel.style.display = this.show === "before" ? "none" : "";
    const many = has && this.pairs.length > 1;
    this.bar.style.display = many ? "" : "none";
    this.counter.textContent = `${TEXTS.photo} ${this.index + 1} / ${this.pairs.length}`;
    this.prevButton.title = TEXTS.previous;
    this.nextButton.title = TEXTS.next;
    this.prevButton.setAttribute("aria-label", TEXTS.previous);
    this.nextButton.setAttribute("aria-label", TEXTS.next);
    this.root.title = TEXTS.tooltip;
    this.root.setAttribute("aria-label", `DDColor Compare: ${TEXTS.tooltip}`);
    this.root.setAttribute("aria-valuenow", String(Math.round(pct)));
    this.root.setAttribute("aria-valuetext", this.show === "split" ? `${Math.round(pct)}%` : TEXTS[this.show]);
    this.root.dataset.show = this.show;
    this.root.dataset.index = String(this.index);
    this.root.dataset.count = String(this.pairs.length);
    this.root.dataset.position = String(this.position);
    this.root.dataset.ready = String(ready);
    if (this.node.setDirtyCanvas) this.node.setDirtyCanvas(true, false);
  }

  // --- gestures ------------------------------------------------------------------------------------------
  setPosition(value) {
    this.position = Math.min(1, Math.max(0, value));
    this.show = "split";
    this.render();
  }

  toggle() {
    this.show = this.show === "before" ? "after" : "before";
    this.render();
  }

  step(delta, event) {
    if (event) event.stopPropagation();
    if (this.pairs.length < 2) return;
    this.index = (this.index + delta + this.pairs.length) % this.pairs.length;
    this.load();
  }

  selectNode() {
    const canvas = app && app.canvas;
    if (canvas && canvas.selectNode && !(canvas.selected_nodes && canvas.selected_nodes[this.node.id])) {
      canvas.selectNode(this.node, false);
    }
  }

  onPointerDown(e) {
    if (e.button !== 0 || !this.pairs.length) return;
    e.preventDefault();
    e.stopPropagation();
    this.selectNode();
    this.root.focus({ preventScroll: true });
    this.drag = { x: e.clientX, y: e.clientY, moved: false };
    if (this.stage.setPointerCapture) this.stage.setPointerCapture(e.pointerId);
  }

  onPointerMove(e) {
    if (!this.drag) return;
    e.stopPropagation();
    if (!this.drag.moved && Math.hypot(e.clientX - this.drag.x, e.clientY - this.drag.y) < DRAG_THRESHOLD_PX) return;
    this.drag.moved = true;
    this.setPosition(this.positionFromEvent(e));
  }

  onPointerUp(e) {
    if (!this.drag) return;
    e.stopPropagation();
    const clicked = !this.drag.moved;
    this.drag = null;
    if (this.stage.releasePointerCapture && this.stage.hasPointerCapture && this.stage.hasPointerCapture(e.pointerId)) {
      this.stage.releasePointerCapture(e.pointerId);
    }
    if (clicked) this.toggle();
  }

  // true when the key was ours
  handleKey(e) {
    if (!this.pairs.length || e.ctrlKey || e.metaKey || e.altKey) return false;
    const step = e.shiftKey ? BIG_STEP : SMALL_STEP;
    const from = this.show === "before" ? 1 : this.show === "after" ? 0 : this.position;
    switch (e.key) {
      case "ArrowLeft":
        this.setPosition(from - step);
        return true;
      case "ArrowRight":
        this.setPosition(from + step);
        return true;
      case "Home":
        this.setPosition(0);
        return true;
      case "End":
        this.setPosition(1);
        return true;
      case " ":
      case "Enter":
        this.toggle();
        return true;
      case "ArrowUp":
        this.step(-1);
        return this.pairs.length > 1;
      case "ArrowDown":
        this.step(1);
        return this.pairs.length > 1;
      default:
        return false;
    }
  }

  onKey(e) {
    if (this.handleKey(e)) {
      e.preventDefault();
      e.stopPropagation();
    }
  }

  dispose() {
    if (this.observer) this.observer.disconnect();
    comparers.delete(this);
  }
}

// Arrow keys while exactly this node is selected on the canvas (the comparer itself need not have focus).
function onWindowKey(e) {
  if (e.defaultPrevented || isTyping(e.target) || !app || !app.canvas) return;
  const selected = app.canvas.selected_nodes ? Object.values(app.canvas.selected_nodes) : [];
  if (selected.length !== 1 || !selected[0].__ddcolorComparer) return;
  if (e.target && e.target.closest && e.target.closest(".ddcolor-cmp")) return; // handled by the element
  if (selected[0].__ddcolorComparer.handleKey(e)) {
    e.preventDefault();
    e.stopPropagation();
  }
}

function attach(node) {
  if (node.__ddcolorComparer || typeof node.addDOMWidget !== "function") return;
  const comparer = new Comparer(node);
  comparers.add(comparer);
  const widget = node.addDOMWidget(WIDGET_NAME, "ddcolor_comparer", comparer.root, {
    serialize: false, // not a setting: nothing in widgets_values or the prompt
    hideOnZoom: false,
    getMinHeight: () => (comparer.pairs.length ? 160 : 40),
  });
  widget.serialize = false;
  node.__ddcolorComparer = comparer;
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    comparer.dispose();
    return onRemoved ? onRemoved.apply(this, arguments) : undefined;
  };
}

function grow(node) {
  // room for the picture the first time one arrives (a node from an older workflow may be only 110 px high)
  if (!node.computeSize || !node.setSize) return;
  const min = node.computeSize();
  const width = Math.max(node.size[0], min[0], 320);
  const height = Math.max(node.size[1], min[1] + 140);
  if (width !== node.size[0] || height !== node.size[1]) node.setSize([width, height]);
}

if (app && typeof app.registerExtension === "function") {
  addStyle();
  loadTexts();
  window.addEventListener("keydown", onWindowKey, true);
  app.registerExtension({
    name: "ComfyUI-DDColor.Compare",
    beforeRegisterNodeDef(nodeType, nodeData) {
      if (!nodeData || nodeData.name !== NODE_TYPE) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated ? onNodeCreated.apply(this, arguments) : undefined;
        attach(this);
        return result;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const result = onExecuted ? onExecuted.apply(this, arguments) : undefined;
        const comparer = this.__ddcolorComparer;
        if (comparer && output && output.before_images && output.after_images) {
          comparer.setOutput(output);
          grow(this);
        }
        return result;
      };
    },
  });
}
