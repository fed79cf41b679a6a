// WhatsApp Web's weight (weight.py says what and why): its code from static.whatsapp.net,
// its fonts and emoji sheet, and once synced a store of chats, messages and contacts with
// the chat list rendered, each visible row with its profile picture. Loaded before
// whatsapp.js only when the simulator is told to carry the real page's weight.
(() => {
  "use strict";
  const w = (window.__SIM_CONFIG || {}).weight;
  if (!w) return;
  const RSRC = `${w.staticHost}/rsrc.php`;

  // The application's modules: each factory runs once, as WhatsApp's loader runs them.
  const modules = (window.__simWeightModules = {});
  window.__wd = (name, factory) => { modules[name] = factory(); };
  for (let i = 0; i < w.bundles; i += 1) {
    // Parser-inserted, in order, as the real page's script tags are.
    document.write(`<script src="${RSRC}/v4/app-${i}.js"></` + "script>");
  }

  // Fonts and the emoji sheet, used by what the page shows from the start.
  const style = document.createElement("style");
  const families = [];
  for (let i = 0; i < w.fonts; i += 1) {
    families.push(`wa${i}`);
    style.textContent += `@font-face{font-family:wa${i};src:url(${RSRC}/font-${i}.woff2) format("woff2")}`;
  }
  style.textContent += `body{font-family:${families.join(",")},sans-serif}`
    + `.emoji{display:inline-block;width:20px;height:20px;background:url(${RSRC}/emoji-sprite.png) -40px -60px}`
    + `#side{position:fixed;right:0;top:0;width:340px;height:100%;overflow:hidden}`
    + `#side .row{display:flex;gap:6px;height:36px;align-items:center}`
    + `#side img{width:32px;height:32px;border-radius:16px}`;
  document.head.appendChild(style);

  // A seeded generator: every page carries the same store.
  let seed = 19;
  const rand = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
  const words = "ok thanks see you tomorrow at the office please send the invoice when you can meeting moved to three call me later".split(" ");
  const sentence = (n) => Array.from({ length: n }, () => words[Math.floor(rand() * words.length)]).join(" ");
  const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const thumbnail = (kb) => {
    const chars = new Array(kb * 1024);
    for (let i = 0; i < chars.length; i += 1) chars[i] = b64[Math.floor(rand() * 64)];
    return chars.join("");
  };

  const buildStore = () => {
    const contacts = [];
    for (let i = 0; i < w.contacts; i += 1) {
      const phone = String(15550100000 + i);
      contacts.push({
        id: { server: "c.us", user: phone, _serialized: `${phone}@c.us` },
        lid: `${100000000000 + i * 7}@lid`, name: sentence(2), pushname: sentence(1),
        isBusiness: rand() < 0.1, isMyContact: rand() < 0.6, labels: [], verifiedLevel: 0,
      });
    }
    const chats = [];
    for (let c = 0; c < w.chats; c += 1) {
      const contact = contacts[c % contacts.length];
      const messages = [];
      for (let m = 0; m < w.messages_per_chat; m += 1) {
        const fromMe = rand() < 0.4;
        const media = (c * w.messages_per_chat + m) % w.media_every === 0;
        messages.push({
          id: { fromMe, remote: contact.lid, id: `3EB0${Math.floor(rand() * 1e12).toString(16)}`,
            _serialized: `${fromMe}_${contact.lid}_${c}_${m}` },
          type: media ? "image" : "chat", body: media ? thumbnail(w.thumbnail_kb) : sentence(3 + Math.floor(rand() * 20)),
          t: 1764000000 + c * 1000 + m, ack: fromMe ? 3 : 0, from: fromMe ? "me" : contact.lid,
          to: fromMe ? contact.lid : "me", star: false, broadcast: false, mentionedJidList: [],
          isForwarded: rand() < 0.05, labels: [], links: [], caption: media ? sentence(4) : undefined,
          mimetype: media ? "image/jpeg" : undefined, size: media ? 40000 + Math.floor(rand() * 200000) : undefined,
        });
      }
      chats.push({ id: contact.lid, name: contact.name, unreadCount: Math.floor(rand() * 5),
        t: messages[messages.length - 1].t, pin: 0, muteExpiration: 0, archive: false, messages });
    }
    return { contacts, chats };
  };

  const renderSide = (store) => {
    const side = document.createElement("div");
    side.id = "side";
    side.innerHTML = store.chats.slice(0, w.visible_chats).map((chat, i) => {
      const last = chat.messages[chat.messages.length - 1];
      const text = last.type === "chat" ? last.body : "Photo";
      return `<div class="row"><img alt="" src="${w.picturesHost}/v/t61.24694-24/${i}.png">`
        + `<span style="font-family:wa${i % w.fonts}">${chat.name}</span><span class="emoji"></span>`
        + `<small>${text.slice(0, 40)}</small></div>`;
    }).join("");
    document.body.appendChild(side);
  };

  // The store fills once the first sync is over (and again after a reload, from IndexedDB
  // on the real page: here rebuilt), and is what the page keeps from then on.
  const synced = setInterval(() => {
    const status = window.__waSim && window.__waSim.status && window.__waSim.status();
    if (!status || status.state !== "CONNECTED" || status.syncProgress !== 100) return;
    clearInterval(synced);
    window.__simWeightStore = buildStore();
    renderSide(window.__simWeightStore);
  }, 250);
})();
