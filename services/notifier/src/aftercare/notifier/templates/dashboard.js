const esc = s => String(s ?? '').replace(/[&<>'"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;',"'":'&#39;','"':'&quot;'}[c]));
function rowHtml(r){return `<td><a href="/dashboard/incidents/${esc(r.incident_id)}">${esc(r.number)}</a></td>`+
 `<td>${esc(r.tenant_id)}</td><td>${esc(r.title)}</td><td class="${esc(r.priority)}">${esc(r.priority)}</td>`+
 `<td>${esc(r.status)}</td><td class="sla ${esc(r.sla)}" data-due="${esc(r.sla_due||'')}" data-state="${esc(r.sla)}">${esc(r.sla)}</td>`+
 `<td>${esc(r.channel)}</td><td>${esc(r.verdict)}</td><td>${esc(r.notifications_sent)}</td>`;}
function matches(r){return (!FILTER.tenant||r.tenant_id===FILTER.tenant)&&(!FILTER.status||r.status===FILTER.status)&&(!FILTER.priority||r.priority===FILTER.priority);}
const source = new EventSource('/dashboard/events');
source.addEventListener('incident', e => {
  const r = JSON.parse(e.data); if(!matches(r)) return;
  let tr = document.getElementById('row-'+r.incident_id);
  if(!tr){tr=document.createElement('tr');tr.id='row-'+r.incident_id;document.getElementById('incidents').prepend(tr);}
  tr.innerHTML = rowHtml(r); tr.className='new';
});
function tick(){for(const td of document.querySelectorAll('td.sla')){const due=td.dataset.due;
 if(!due||td.dataset.state==='met')continue;const left=(Date.parse(due)-Date.now())/1000;
 const m=Math.floor(Math.abs(left)/60), s=Math.floor(Math.abs(left)%60);
 td.textContent=(left<0?'breached ':'')+m+'m '+s+'s';td.className='sla '+(left<0?'breached':'running');}}
setInterval(tick,1000);tick();
