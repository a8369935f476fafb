const esc = s => String(s ?? '').replace(/[&<>'"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;',"'":'&#39;','"':'&quot;'}[c]));
function rowHtml(r){return `<td><a href="/dashboard/incidents/${esc(r.incident_id)}">${esc(r.number)}</a></td>`+
 `<td>${esc(r.tenant_id)}</td><td>${esc(r.title)}</td><td class="${esc(r.priority)}">${esc(r.priority)}</td>`+
 `<td>${esc(r.status)}</td><td class="sla ${esc(r.sla)}" data-due="${esc(r.sla_due||'')}" data-state="${esc(r.sla)}">${esc(r.sla)}</td>`+
 `<td>${esc(r.channel)}</td><td>${esc(r.verdict)}</td><td>${esc(r.notifications_sent)}</td>`;}
function matches(r){return (!FILTER.tenant||r.tenant_id===FILTER.tenant)&&(!FILTER.status||r.status===FILTER.status)&&(!FILTER.priority||r.priority===FILTER.priority);}
// From the page's stamp: rows that changed while the page loaded come first. On a reconnect the
// browser sends the last row's id; told to reload when the rows it missed are gone.
const source = new EventSource('/dashboard/events?since=' + SINCE);
source.addEventListener('reload', () => location.reload());
source.addEventListener('incident', e => {
  const r = JSON.parse(e.data); if(!matches(r)) return;
  let tr = document.getElementById('row-'+r.incident_id);
  if(!tr){tr=document.createElement('tr');tr.id='row-'+r.incident_id;document.getElementById('incidents').prepend(tr);}
  tr.innerHTML = rowHtml(r); tr.className='new';
});
// Pending approvals follow the incident's row: added when remediation asks, gone once decided.
function approvalHtml(a){let b='';if(CAN_ACT){for(const act of ['approve','reject']){
 b+=`<form class="inline decide" method="post" action="/dashboard/runs/${esc(a.run_id)}/${act}">`+
 `<input type="hidden" name="csrf" value="${esc(CSRF)}"><button type="submit" name="${act}">${act[0].toUpperCase()+act.slice(1)}</button></form> `;}}
 return `<b>${esc(a.number)}</b> ${esc(a.step)}: ${esc(a.reason)} ${b}`;}
source.addEventListener('incident', e => {
  const r = JSON.parse(e.data), list = document.getElementById('approvals'), keep = new Set();
  for(const a of r.approvals||[]){keep.add('approval-'+a.approval_id);
    if(document.getElementById('approval-'+a.approval_id))continue;
    const li=document.createElement('li');li.id='approval-'+a.approval_id;li.dataset.incident=r.incident_id;
    li.innerHTML=approvalHtml(a);li.className='new';list.append(li);}
  for(const li of list.querySelectorAll('li[data-incident]'))
    if(li.dataset.incident===r.incident_id&&!keep.has(li.id))li.remove();
});
// Approve/reject without leaving the page: the same CSRF-protected form, answered as JSON.
document.addEventListener('submit', async e => {
  const form = e.target; if(!form.classList.contains('decide'))return; e.preventDefault();
  for(const b of form.parentElement.querySelectorAll('button'))b.disabled=true;
  const notice=document.getElementById('notice');
  try{const res=await fetch(form.action,{method:'POST',body:new FormData(form),headers:{Accept:'application/json'},credentials:'same-origin'});
    const body=await res.json();notice.textContent=body.outcome;
    if(!res.ok)for(const b of form.parentElement.querySelectorAll('button'))b.disabled=false;}
  catch(err){notice.textContent='could not reach the dashboard: '+err;
    for(const b of form.parentElement.querySelectorAll('button'))b.disabled=false;}
});
function tick(){for(const td of document.querySelectorAll('td.sla')){const due=td.dataset.due;
 if(!due||td.dataset.state==='met')continue;const left=(Date.parse(due)-Date.now())/1000;
 const m=Math.floor(Math.abs(left)/60), s=Math.floor(Math.abs(left)%60);
 td.textContent=(left<0?'breached ':'')+m+'m '+s+'s';td.className='sla '+(left<0?'breached':'running');}}
setInterval(tick,1000);tick();
