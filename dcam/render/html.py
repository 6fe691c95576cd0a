"""Static HTML pages of explanations: no network, no CDN, the viewer's
script and style inline. Heatmaps are rendered in the browser from the maps
(bilinear upsampling with half-pixel centres; along a side with fewer pixels
than cells, each pixel the mean of the cells it covers, as
:func:`dcam.render.cells.axis_weights`; clamped to [0, 1], coloured
through the same 256-colour table as :func:`dcam.render.colorize` and blended
with the image at the chosen opacity, as :func:`dcam.render.overlay` draws).
The page's maps are quantised to steps of 1/255 (:func:`encode_maps`) where the
PNG overlays colour the float maps, so a page's colours can differ from the
PNGs' by a few levels of 255 per channel (up to 5 measured, on 15-19% of the
pixels); the encoding keeps the pages small.

    write_explanation_page(folder, explanation)   # folder/index.html, one image, all inline
    explanation_html(explanation)                 # an HTML fragment (Explanation._repr_html_)
    page_html(config) / fragment_html(config)     # the viewer over any page data (dcam view)

Page data: a record is a dict (JSON)::

    {"id", "response", "where", "image": URL or null, "size": [W, H],
     "items": [{"text", "number"}], "grid": [h, w],
     "steps": S,                  # 1, or the number of steps of a map trajectory
     "step_labels": [...] | null, # one label per step; default "step s/S-1" (0-based, as the GIFs)
     "maps": base64 of uint8 [S, T, h, w] (round(255 * clamp(v, 0, 1)), row-major),
     "stats": {name: [T]}, "metrics": {...} | null, "notes": [...], "error": null | reason,
     "box": [x0, y0, x1, y1],     # optional: the part of the image the maps cover (default all of it)
     "cells": {"x": [w], "y": [h]}}  # optional: centres of the columns and rows (fractions of the image)

A trajectory (``S > 1``) gets a step slider (its steps within :data:`PAGE_TRAJECTORY_BYTES`, evenly kept:
:func:`trajectory_frames`). The viewer's config:
``{"title", "summary", "lut": [768 ints], "total", "per_page", "pages",
"records": [...] (inline, page 0) or "page_url": "view/page-%05d.js"}``; a
page script calls ``DcamViewer.page(n, [records])``. The viewer holds the page shown and its neighbours
only; the others are dropped and their scripts loaded again when shown (memory flat however many are viewed).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import uuid
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InputError
from ..output import check_existing_folder, write_text_atomic
from .overlay import FULL_BOX, check_alpha, check_map

_CSS = """
.dcv{font:14px system-ui,sans-serif;color:#222;display:flex;flex-direction:column;gap:8px}
.dcv .top{display:flex;flex-wrap:wrap;gap:12px;align-items:baseline}.dcv .sum{color:#555;font-size:12px}
.dcv .body{display:flex;gap:12px;align-items:flex-start}
.dcv .list{width:260px;max-height:80vh;overflow:auto;border:1px solid #ddd;border-radius:4px}
.dcv .row{display:flex;gap:6px;padding:4px;cursor:pointer;border-bottom:1px solid #eee;align-items:center}
.dcv .row.cur{background:#e8f0ff}.dcv .row img,.dcv .row .ph{width:40px;height:40px;object-fit:cover;
background:#ccc;flex:none}.dcv .row .t{font-size:12px;overflow:hidden;max-height:3.6em}
.dcv .row.err .t{color:#b00}.dcv .pager{display:flex;gap:6px;align-items:center;padding:4px}
.dcv .main{flex:1;min-width:0}.dcv .fig{position:relative;display:inline-block;background:#ccc}
.dcv .fig img,.dcv .fig canvas.ov{display:block;width:100%;height:100%}
.dcv .fig canvas.ov{position:absolute;left:0;top:0}
.dcv .words{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}.dcv .words button{border:1px solid #999;
border-radius:3px;background:#fff;padding:2px 6px;cursor:pointer}.dcv .words button.on{background:#2a5bd7;
color:#fff;border-color:#2a5bd7}.dcv table{border-collapse:collapse;font-size:12px;margin-top:6px}
.dcv td,.dcv th{border:1px solid #ddd;padding:2px 6px;text-align:left}.dcv .error{color:#b00}
.dcv .bar{display:flex;align-items:center;gap:4px;font-size:11px;margin:4px 0}.dcv .ctl{font-size:12px;margin:4px 0}
.dcv .top,.dcv .resp,.dcv h3,.dcv .words button,.dcv td{overflow-wrap:anywhere}.dcv .words button{max-width:100%}
"""

_JS = r"""
(function(){
if(window.DcamViewer)return;
var pending={};
function el(t,a,kids){var e=document.createElement(t);for(var k in a||{}){if(k==='text')e.textContent=a[k];
 else if(k==='cls')e.className=a[k];else e.setAttribute(k,a[k]);}(kids||[]).forEach(function(c){e.appendChild(c);});
 return e;}
function fmt(v){if(v===null||v===undefined)return'n/a';if(typeof v==='number')
 return Number.isInteger(v)?String(v):v.toPrecision(4);return String(v);}
// a value's entry in the colour table, binned as matplotlib bins it for the saved overlays (dcam.render.colorize):
// floor(v*256), 1 in the last bin (round(v*255) drew colours up to 5/255 off the PNGs')
function lutIndex(v){return Math.min(Math.floor(Math.min(Math.max(v,0),1)*256),255);}
function decode(b64){var s=atob(b64),a=new Uint8Array(s.length);for(var i=0;i<s.length;i++)a[i]=s.charCodeAt(i);
 return a;}
function Viewer(root,cfg){
 this.root=root;this.cfg=cfg;this.pages={};this.loading={};this.page=-1;this.rec=0;this.item=0;this.hover=-1;
 this.step=0;
 this.alpha=cfg.alpha===undefined?0.5:cfg.alpha;this.build();
 if(cfg.records){this.pages[0]=cfg.records;}
 var h=/#r=(\d+)/.exec(location.hash||''),n=h&&!cfg.records?parseInt(h[1],10):0;
 this.show(Math.min(n,Math.max(cfg.total-1,0)));}
Viewer.prototype.build=function(){
 var s=this,c=this.cfg,r=this.root;r.classList.add('dcv');r.innerHTML='';
 var top=el('div',{cls:'top'},[el('b',{text:c.title||'dcam'}),el('span',{cls:'sum',text:c.summary||''})]);
 this.list=el('div',{cls:'list'});this.main=el('div',{cls:'main'});
 var side=el('div',{},[this.pager=el('div',{cls:'pager'}),this.list]);
 r.appendChild(top);if(c.metrics_html){var m=el('div');m.innerHTML=c.metrics_html;r.appendChild(m);}
 r.appendChild(el('div',{cls:'body'},(c.total>1||c.pages>1)?[side,this.main]:[this.main]));
 r.tabIndex=0;r.addEventListener('keydown',function(e){s.key(e);});
 if(!c.embedded)document.addEventListener('keydown',function(e){if(e.target===document.body)s.key(e);});};
Viewer.prototype.key=function(e){var k=e.key,d=0;
 if(e.target&&e.target.tagName==='INPUT')return;
 if(k==='j'||k==='ArrowDown')d=1;else if(k==='k'||k==='ArrowUp')d=-1;
 else if(k==='PageDown'||k==='n')d=this.cfg.per_page;else if(k==='PageUp'||k==='p')d=-this.cfg.per_page;
 else if(k==='ArrowRight'||k==='ArrowLeft'){var r=this.record();if(r&&r.items.length){
  this.select((this.item+(k==='ArrowRight'?1:r.items.length-1))%r.items.length);}e.preventDefault();return;}
 else return;
 e.preventDefault();this.show(Math.max(0,Math.min(this.cfg.total-1,this.rec+d)));};
Viewer.prototype.record=function(){var p=this.pages[this.page];return p?p[this.rec%this.cfg.per_page]:null;};
// Only the pages within KEEP of the one shown are held: a page of traced records is ~70 MB in the browser, and
// keeping every page shown grew it without bound. One either side, so PageUp after PageDown and j/k across a
// page's edge show records already held; a page further away is dropped (its records; its script element
// leaves the document once run) and loaded again from its file when it is shown.
var KEEP=1;
Viewer.prototype.near=function(pg){return Math.abs(pg-Math.floor(this.rec/this.cfg.per_page))<=KEEP;};
Viewer.prototype.show=function(n){var s=this,pg=Math.floor(n/this.cfg.per_page);this.rec=n;
 if(this.cfg.page_url)for(var k in this.pages)if(!this.near(+k))delete this.pages[k];
 if(this.pages[pg]){this.page=pg;this.item=0;this.step=-1;this.render();return;}
 this.root.__dcv=this;Viewer.current=this;
 if(this.loading[pg])return;  // its script is on the way (keys pressed faster than it loads): shown when it runs
 pending[pg]=function(recs){if(s.near(pg))s.pages[pg]=recs;if(Math.floor(s.rec/s.cfg.per_page)===pg)s.show(s.rec);};
 var sc=document.createElement('script');sc.src=this.cfg.page_url.replace('%05d',('0000'+pg).slice(-5));
 this.loading[pg]=sc;
 sc.onload=function(){delete s.loading[pg];sc.remove();};
 sc.onerror=function(){delete s.loading[pg];delete pending[pg];sc.remove();
  if(Math.floor(s.rec/s.cfg.per_page)===pg)s.main.textContent='cannot load '+sc.src;};
 document.head.appendChild(sc);};
Viewer.prototype.renderList=function(){
 var s=this,c=this.cfg,p=this.pages[this.page]||[];this.list.innerHTML='';this.pager.innerHTML='';
 var prev=el('button',{text:'\u2190',title:'previous page (PageUp)'}),next=el('button',{text:'\u2192',
  title:'next page (PageDown)'});prev.disabled=this.page<=0;next.disabled=this.page>=c.pages-1;
 prev.onclick=function(){s.show((s.page-1)*c.per_page);};next.onclick=function(){s.show((s.page+1)*c.per_page);};
 this.pager.appendChild(prev);this.pager.appendChild(el('span',{cls:'pg',text:'page '+(this.page+1)+' / '+c.pages+
  ' ('+c.total+' records)'}));this.pager.appendChild(next);
 p.forEach(function(r,i){var n=s.page*c.per_page+i;
  var row=el('div',{cls:'row'+(n===s.rec?' cur':'')+(r.error?' err':''),'data-n':n},[
   r.image?el('img',{src:r.image,loading:'lazy',alt:''}):el('div',{cls:'ph'}),
   el('div',{cls:'t',text:(r.id)+': '+(r.error?'error: '+r.error:r.response)})]);
  row.onclick=function(){s.show(n);};s.list.appendChild(row);if(n===s.rec&&row.scrollIntoView)
   row.scrollIntoView({block:'nearest'});});};
// render rebuilds the word buttons; the old ones never get a mouseleave, so the hover is reset with them
Viewer.prototype.render=function(){
 var s=this,r=this.record(),m=this.main;this.renderList();m.innerHTML='';this.hover=-1;if(!r)return;
 this.root.setAttribute('data-record',r.id);
 m.appendChild(el('h3',{text:r.id+(r.where?' ('+r.where+')':'')}));
 if(r.error){m.appendChild(el('div',{cls:'error',text:'error: '+r.error}));return;}
 m.appendChild(el('div',{cls:'resp',text:r.response}));
 var words=el('div',{cls:'words'});this.buttons=r.items.map(function(it,k){
  var b=el('button',{text:it.text,'data-k':k,title:'word '+it.number});
  b.onclick=function(){s.select(k);};b.onmouseenter=function(){s.hover=k;s.draw();};
  b.onmouseleave=function(){s.hover=-1;s.draw();};words.appendChild(b);return b;});m.appendChild(words);
 var W=r.size[0],H=r.size[1],sc=Math.min(448/Math.max(W,H),Math.max(1,256/Math.min(W,H)));
 this.dw=Math.max(1,Math.round(W*sc));this.dh=Math.max(1,Math.round(H*sc));
 var fig=el('div',{cls:'fig'});fig.style.width=this.dw+'px';fig.style.height=this.dh+'px';
 if(r.image)fig.appendChild(el('img',{src:r.image,alt:r.id}));
 this.canvas=el('canvas',{cls:'ov',width:this.dw,height:this.dh});fig.appendChild(this.canvas);m.appendChild(fig);
 m.appendChild(this.colourBar());
 var op=el('input',{type:'range',min:0,max:100,value:Math.round(this.alpha*100),cls:'opacity'});
 op.oninput=function(){s.alpha=op.value/100;s.draw();};
 m.appendChild(el('div',{cls:'ctl'},[el('span',{text:'opacity '}),op]));
 if(r.steps>1){if(this.step<0)this.step=r.steps-1;
  var st=el('input',{type:'range',min:0,max:r.steps-1,value:this.step,cls:'step'}),lab=el('span',{cls:'steplab'});
  var setl=function(){lab.textContent=' '+(r.step_labels?r.step_labels[s.step]:'step '+s.step+'/'+(r.steps-1));};
  st.oninput=function(){s.step=parseInt(st.value,10);setl();s.draw();};setl();
  m.appendChild(el('div',{cls:'ctl'},[el('span',{text:'trajectory '}),st,lab]));}
 this.stats=el('table',{cls:'stats'});m.appendChild(this.stats);
 if(r.metrics)m.appendChild(this.metricsTable(r.metrics));
 (r.notes||[]).forEach(function(t){m.appendChild(el('div',{cls:'sum',text:'note: '+t}));});
 this.maps=r.maps?decode(r.maps):null;this.select(Math.min(this.item,r.items.length-1));};
Viewer.prototype.colourBar=function(){var c=el('canvas',{width:200,height:10,cls:'cbar'}),x=c.getContext('2d');
 var img=x.createImageData(200,10),L=this.cfg.lut;for(var i=0;i<200;i++){var q=lutIndex(i/199);
 for(var j=0;j<10;j++){var o=(j*200+i)*4;img.data[o]=L[3*q];img.data[o+1]=L[3*q+1];img.data[o+2]=L[3*q+2];
 img.data[o+3]=255;}}x.putImageData(img,0,0);
 return el('div',{cls:'bar'},[el('span',{text:'0'}),c,el('span',{text:'1'})]);};
Viewer.prototype.metricsTable=function(mt){var t=el('table',{cls:'metrics'}),w=mt.words||[];
 t.appendChild(el('tr',{},['word','kind','Obj-IoU','contrast','concentration','F3','Func-IoU'].map(function(h){
  return el('th',{text:h});})));
 var o=mt.object||{},f=mt.function||{};(o.words||[]).forEach(function(i,k){t.appendChild(el('tr',{},[w[i],
  'object',o.obj_iou[k],o.contrast[k],o.concentration[k],o.f3[k],''].map(function(v){
  return el('td',{text:fmt(v)});})));});
 (f.words||[]).forEach(function(i,k){t.appendChild(el('tr',{},[w[i],'function','','','','',f.func_iou[k]].map(
  function(v){return el('td',{text:v===''?'':fmt(v)});})));});return t;};
Viewer.prototype.select=function(k){var r=this.record();if(!r||k<0)return;this.item=k;
 this.buttons.forEach(function(b,i){b.classList.toggle('on',i===k);});this.root.setAttribute('data-word',k);
 var st=this.stats;st.innerHTML='';st.appendChild(el('tr',{},[el('th',{text:'map statistic'}),
  el('th',{text:'"'+r.items[k].text+'"'})]));
 Object.keys(r.stats||{}).forEach(function(n){st.appendChild(el('tr',{},[el('td',{text:n}),
  el('td',{text:fmt(r.stats[n][k])})]));});this.draw();};
Viewer.prototype.draw=function(){var r=this.record();if(!r||!this.canvas||!this.maps)return;
 var k=this.hover>=0?this.hover:this.item,T=r.items.length,h=r.grid[0],w=r.grid[1],W=this.dw,H=this.dh;
 var base=((Math.max(this.step,0)*T)+k)*h*w,m=this.maps,L=this.cfg.lut,a=Math.round(this.alpha*255);
 var x=this.canvas.getContext('2d'),img=x.createImageData(W,H),d=img.data;
 // the map covers r.box of the image (a model that sees a crop), zero outside: dcam.render.map_on_image
 var b=r.box||[0,0,1,1],X0=Math.round(b[0]*W),Y0=Math.round(b[1]*H);
 var X1=Math.max(X0+1,Math.round(b[2]*W)),Y1=Math.max(Y0+1,Math.round(b[3]*H));  // past the edges: a padded square
 var xs=new Array(X1-X0),ys=new Array(Y1-Y0),cl=r.cells;
 // a stitched map's columns and rows lie at r.cells' centres (fractions of the image): a pixel's cell coordinate
 // interpolates them, clamped at both ends (dcam.render.cells.axis_coordinates); without them, evenly over the box.
 // Each pixel gets [cell, weight, cell, weight...]: bilinear (two cells); where the axis has fewer pixels than
 // cells, the mean of the cells over the pixel's span (dcam.render.cells.axis_weights: bilinear skipped cells)
 function axis(n,N,out,c,lo,hi){var P=c?c.map(function(v){return (v-lo)/(hi-lo)*N;}):null,j=0;
  if(N<n){var E=[0];for(var k=1;k<n;k++)E.push(P?(P[k-1]+P[k])/2:k*N/n);E.push(N);
   for(var i=0;i<N;i++){var t=[];for(var k=0;k<n;k++){var lo2=Math.max(i,E[k]),hi2=Math.min(i+1,E[k+1]);
    if(hi2>lo2)t.push(k,hi2-lo2);}out[i]=t;}return;}
  for(var i=0;i<N;i++){var p=i+0.5,s;
   if(!P)s=Math.max((i+0.5)*n/N-0.5,0);else if(p<=P[0])s=0;else if(p>=P[n-1])s=n-1;
   else{while(P[j+1]<=p)j++;s=j+(p-P[j])/(P[j+1]-P[j]);}
   var i0=Math.min(Math.floor(s),n-1),f=s-i0;out[i]=[i0,1-f,Math.min(i0+1,n-1),f];}}
 axis(w,X1-X0,xs,cl&&cl.x,b[0],b[2]);axis(h,Y1-Y0,ys,cl&&cl.y,b[1],b[3]);
 // (two taps a side sum as ((m00*(1-fx)+m01*fx)*(1-fy)+(m10*(1-fx)+m11*fx)*fy)/255: the bilinear drawing's numbers)
 for(var yi=0;yi<H;yi++){var y=ys[yi-Y0];for(var xi=0;xi<W;xi++){var c=xs[xi-X0],v=0;
  if(y&&c){for(var a2=0;a2<y.length;a2+=2){var row=base+y[a2]*w,u=0;
   for(var b2=0;b2<c.length;b2+=2)u+=m[row+c[b2]]*c[b2+1];v+=u*y[a2+1];}v/=255;}
  var q=lutIndex(v),o=(yi*W+xi)*4;
  d[o]=L[3*q];d[o+1]=L[3*q+1];d[o+2]=L[3*q+2];d[o+3]=a;}}
 x.putImageData(img,0,0);this.root.setAttribute('data-drawn',k+':'+this.step);};
window.DcamViewer={create:function(root,cfg){return new Viewer(root,cfg);},
 page:function(n,recs){if(pending[n]){var f=pending[n];delete pending[n];f(recs);}}};
})();
"""


def colormap_lut(colormap: str = "jet") -> List[int]:
    """256 RGB colours (flat list of 768 ints) of :func:`dcam.render.colorize`."""
    from .overlay import colorize

    return colorize(np.linspace(0.0, 1.0, 256)[None, :], colormap)[0].reshape(-1).tolist()


def encode_maps(maps, name: str = "maps") -> str:
    """Base64 of ``round(255 * clamp(maps, 0, 1))`` as uint8, row-major (``[T,h,w]`` or ``[S,T,h,w]``); the
    maps checked as :func:`dcam.render.overlay` checks one (InputError naming ``name``: a NaN was drawn as 0,
    5.0 as 1, where the overlays refuse them; the clamp only drops the rounding MAP_TOLERANCE allows).
    Each value is quantised to the nearest 1/255 (off by up to 1/510), so the page's colours can differ from
    the PNG overlays of the float maps by a few levels of 255 per channel."""
    a = np.asarray(maps.detach().cpu().float().numpy() if hasattr(maps, "detach") else maps, dtype=np.float32)
    q = np.rint(np.clip(check_map(a, name), 0.0, 1.0) * 255.0).astype(np.uint8)
    return base64.b64encode(np.ascontiguousarray(q).tobytes()).decode()


def image_data_url(image, max_side: int = 512) -> str:
    """A PIL image as a PNG ``data:`` URL (shrunk to ``max_side``)."""
    im = image.convert("RGB")
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def record_data(rid: str, response: str, items: List[Dict[str, Any]], maps, image: Optional[str],
                size, grid, stats: Optional[Dict[str, list]] = None, metrics: Optional[dict] = None,
                notes: Optional[List[str]] = None, where: str = "", step_labels: Optional[list] = None) -> dict:
    """One record of the page data (see the module docstring); ``maps``: ``[T,h,w]`` or ``[S,T,h,w]``."""
    shape = tuple(maps.shape)
    steps = shape[0] if len(shape) == 4 else 1
    return {"id": str(rid), "response": response, "where": where, "image": image, "size": [int(v) for v in size],
            "items": items, "grid": [int(v) for v in grid], "steps": int(steps), "step_labels": step_labels,
            "maps": encode_maps(maps), "stats": stats or {}, "metrics": metrics, "notes": list(notes or []),
            "error": None}


def error_data(rid: str, reason: str, where: str = "") -> dict:
    return {"id": str(rid), "where": where, "error": str(reason), "items": [], "response": "", "image": None}


#: The most bytes of trajectory maps one page record carries (uint8, before base64's 4/3): past it the
#: page keeps evenly spaced steps, the first and the last among them, and says so in a note. 1 MiB (1.4 MB of
#: base64) keeps a record near Jupyter's default output rate limit (1 MB/s over 3 s; the page is a cell's
#: output, kept in the notebook), where 64 steps x 50 words of 27 x 27 cells added 3.1 MB, 128 x 256 of 48 x 48
#: 100 MB.
PAGE_TRAJECTORY_BYTES = 1 << 20


def check_trajectory_bytes(value, name: str = "trajectory_bytes") -> int:
    """The page's trajectory budget: None is :data:`PAGE_TRAJECTORY_BYTES`, else an int >= 1 (InputError)."""
    from ..errors import positive_int

    return PAGE_TRAJECTORY_BYTES if value is None else positive_int(name, value)


def page_steps(steps: int, step_bytes: int, budget: int = PAGE_TRAJECTORY_BYTES) -> List[int]:
    """The steps of a ``steps``-step trajectory a page shows, ``step_bytes`` a step: every one when they fit
    ``budget``, else the most that fit, evenly spaced from the first to the last (those two at least)."""
    keep = min(steps, max(2, budget // max(1, step_bytes)))
    if keep >= steps:
        return list(range(steps))
    # spaced (steps - 1) / (keep - 1) >= 1 apart, so the rounded steps are distinct
    return [int(v) for v in np.rint(np.linspace(0, steps - 1, keep))]


def trajectory_frames(maps, trajectory, budget: Optional[int] = None):
    """(maps, step labels, notes) of a page record: ``maps`` alone (``[T,h,w]``, no labels, no notes), or
    with a map ``trajectory`` ``[S,T,h,w]`` its steps followed by ``maps`` (``[K+1,T,h,w]``, labelled
    "step s/S-1" and "explanation"; the page shows the explanation first, as the statistics beside it are
    its own: the trajectory's last step is the response as it stood then, not the explanation of the whole
    response). Each step adds ``T h w`` bytes to the page (4/3 of that in base64): the page keeps the
    steps of :func:`page_steps` within ``budget`` bytes (None: :data:`PAGE_TRAJECTORY_BYTES`), labelled
    with their own numbers, and a note says how many it shows."""
    budget = check_trajectory_bytes(budget, "budget")
    if trajectory is None:
        return maps, None, []
    import torch

    S, step_bytes = trajectory.shape[0], int(np.prod(trajectory.shape[1:]))
    kept = page_steps(S, step_bytes, budget)
    frames = torch.cat([trajectory.detach().cpu().float()[kept], maps.detach().cpu().float()[None]])
    notes = [] if len(kept) == S else [
        f"the page shows {len(kept)} of the trajectory's {S} steps (evenly spaced, the first and last among them: "
        f"{budget} bytes of maps at most); the saved trajectory keeps every step"]
    return frames, [f"step {s}/{S - 1}" for s in kept] + ["explanation"], notes


def explanation_record(e, max_side: int = 512, trajectory_bytes: Optional[int] = None) -> dict:
    """The page record of an :class:`dcam.Explanation` (image inline; maps ``[T,h,w]``, or, for one
    explained with ``trajectory=True``, its trajectory's steps and then its maps, ``[S+1,T,h,w]``, under
    a step slider as ``dcam view`` shows a run's: :func:`trajectory_frames`, its steps within
    ``trajectory_bytes``, None: :data:`PAGE_TRAJECTORY_BYTES`)."""
    from ..words import clean_token

    trajectory_bytes = check_trajectory_bytes(trajectory_bytes)  # (named as given: trajectory_frames says budget)
    items = [{"text": clean_token(t) or t, "number": int(n)} for t, n in zip(e.tokens, e.word_numbers)]
    traj = getattr(e, "trajectory", None)
    maps, labels, notes = trajectory_frames(e.maps, None if traj is None else traj.maps, trajectory_bytes)
    rec = record_data("explanation", e.response, items, maps, image_data_url(e.image, max_side), e.image.size,
                      e.maps.shape[-2:], stats=e.stats_lists(), notes=list(e.notes) + notes, step_labels=labels)
    box = tuple(float(v) for v in getattr(e, "box", FULL_BOX))
    if box != FULL_BOX:  # the page places the maps where the PNGs do
        rec["box"] = list(box)
    if getattr(e, "cells", None) is not None:  # and a stitched map's cells on the pixels they were read from
        rec["cells"] = e.cells.as_dict()
    return rec


def viewer_config(records: List[dict], title: str = "dcam", summary: str = "", per_page: int = 50,
                  pages: Optional[int] = None, total: Optional[int] = None, page_url: Optional[str] = None,
                  metrics_html: str = "", colormap="jet", alpha: float = 0.5) -> dict:
    cfg = {"title": title, "summary": summary, "lut": colormap_lut(colormap), "alpha": check_alpha(alpha),
           "per_page": int(per_page),
           "total": int(len(records) if total is None else total), "metrics_html": metrics_html}
    cfg["pages"] = int(pages if pages is not None else max(1, -(-cfg["total"] // cfg["per_page"])))
    if page_url is None:
        cfg["records"] = records
    else:
        cfg["page_url"] = page_url
    return cfg


def script_json(obj) -> str:
    """JSON safe inside a <script> element ("<" only occurs inside JSON strings, where \\u003c means it)."""
    return json.dumps(obj, allow_nan=False).replace("<", "\\u003c")


def fragment_html(cfg: dict) -> str:
    """The viewer as an HTML fragment (a div and its script; several may share a page)."""
    node = f"dcv-{uuid.uuid4().hex[:12]}"
    cfg = dict(cfg, embedded=True)
    return (f"<style>{_CSS}</style><div id=\"{node}\"></div><script>{_JS}\n"
            f"DcamViewer.create(document.getElementById('{node}'), {script_json(cfg)});</script>")


def page_html(cfg: dict) -> str:
    """A whole HTML document of the viewer (works from file://, offline)."""
    title = html.escape(str(cfg.get("title", "dcam")))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self' 'unsafe-inline' data: blob:\">"
            f"<title>{title}</title><style>body{{margin:12px}}{_CSS}</style></head><body><div id=\"dcv\"></div>"
            f"<script>{_JS}\nDcamViewer.create(document.getElementById('dcv'), {script_json(cfg)});</script>"
            "</body></html>\n")


def explanation_html(explanation) -> str:
    """An HTML fragment showing one explanation (for ``Explanation._repr_html_``)."""
    return fragment_html(viewer_config([explanation_record(explanation)], title=explanation.response,
                                       summary=_summary(explanation)))


def write_explanation_page(folder: str, explanation, filename: str = "index.html", colormap="jet",
                           alpha: float = 0.5, trajectory_bytes: Optional[int] = None) -> str:
    """Write ``folder/filename``: the page of one explanation, everything inline, drawn with
    ``colormap`` at opacity ``alpha`` (the saved overlays'); a trajectory's steps within
    ``trajectory_bytes`` (None: :data:`PAGE_TRAJECTORY_BYTES`; :func:`trajectory_frames`); returns its path."""
    trajectory_bytes = check_trajectory_bytes(trajectory_bytes)  # (refused before the page is built)
    cfg = viewer_config([explanation_record(explanation, trajectory_bytes=trajectory_bytes)],
                        title=explanation.response,
                        summary=_summary(explanation), colormap=colormap, alpha=alpha)
    folder = check_existing_folder(folder)
    # a file name inside folder: "sub/x.html" was open()'s FileNotFoundError, naming no argument
    if not isinstance(filename, str) or filename in ("", ".", "..") or os.path.basename(filename) != filename \
            or (os.altsep and os.altsep in filename):
        raise InputError(f"filename: {filename!r} is not a file name (the page is written into folder)")
    path = os.path.join(folder, filename)
    if os.path.isdir(path):
        raise InputError(f"filename: {path!r} is a folder, not a file")
    write_text_atomic(path, page_html(cfg), option="filename")
    return path


def _summary(e) -> str:
    return f"{e.method}{e.layer_words()}, probe {e.probe}, {e.steps} steps, model {e.model_name}"


__all__ = ["write_explanation_page", "explanation_html", "page_html", "fragment_html", "viewer_config",
           "script_json", "record_data", "error_data", "explanation_record", "trajectory_frames", "encode_maps", "colormap_lut",
           "image_data_url", "page_steps", "check_trajectory_bytes", "PAGE_TRAJECTORY_BYTES"]
