// A run's DAG drawn with Cytoscape and the dagre layout (loaded only on a run's page).
import cytoscape from "cytoscape";
import dagre from "cytoscape-dagre";

cytoscape.use(dagre);

export const STATE_COLORS = {
  queued: "#9aa4b2",
  ready: "#b9c2cf",
  running: "#2f7de1",
  retrying: "#e0a100",
  done: "#1f9d55",
  warning: "#d98e04",
  failed: "#d64545",
  cancelled: "#7a7f87",
};

/** Draws nodes {name: {state, kind, depends_on, cached}} into el; returns {update, destroy}. */
export function drawDag(el, nodes, { onSelect } = {}) {
  const names = Object.keys(nodes);
  const elements = [];
  for (const name of names) {
    const n = nodes[name];
    elements.push({ data: { id: name, label: name, state: n.state || "queued", kind: n.kind || "python", cached: n.cached ? "yes" : "no" } });
  }
  for (const name of names) {
    for (const dep of nodes[name].depends_on || []) {
      if (nodes[dep]) elements.push({ data: { id: `${dep}->${name}`, source: dep, target: name } });
    }
  }
  const cy = cytoscape({
    container: el,
    elements,
    boxSelectionEnabled: false,
    autoungrabify: true,
    minZoom: 0.3,
    maxZoom: 2,
    wheelSensitivity: 0.3,
    style: [
      {
        selector: "node",
        style: {
          shape: "round-rectangle",
          label: "data(label)",
          "text-valign": "center",
          "text-halign": "center",
          "font-size": 11,
          "font-family": "system-ui, -apple-system, Segoe UI, sans-serif",
          color: "#fff",
          width: "label",
          height: 26,
          padding: "8px",
          "background-color": (e) => STATE_COLORS[e.data("state")] || "#9aa4b2",
          "border-width": 0,
        },
      },
      { selector: 'node[kind = "expectation"]', style: { shape: "cut-rectangle" } },
      { selector: 'node[kind = "sql"]', style: { "font-style": "italic" } },
      { selector: 'node[cached = "yes"]', style: { "border-width": 2, "border-style": "dashed", "border-color": "#0b5d31" } },
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#111", "border-style": "solid" } },
      {
        selector: "edge",
        style: {
          width: 1.5,
          "line-color": "#b6bfcc",
          "target-arrow-color": "#b6bfcc",
          "target-arrow-shape": "triangle",
          "curve-style": "bezier",
          "arrow-scale": 0.8,
        },
      },
    ],
    layout: { name: "dagre", rankDir: "LR", nodeSep: 18, rankSep: 48, padding: 12 },
  });
  cy.on("tap", "node", (e) => onSelect?.(e.target.id()));
  cy.on("tap", (e) => {
    if (e.target === cy) onSelect?.(null);
  });
  return {
    update(name, state) {
      const n = cy.getElementById(name);
      if (n.nonempty()) n.data("state", state);
    },
    destroy() {
      cy.destroy();
    },
  };
}
