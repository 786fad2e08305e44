#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int c,char**v){int n=atoi(v[2]);char p[4096],buf[4200];memset(buf,7,sizeof buf);double t0=now();
for(int i=0;i<n;i++){snprintf(p,sizeof p,"%s/f%07d",v[1],i);int fd=open(p,O_CREAT|O_EXCL|O_WRONLY,0644);write(fd,buf,4200);fdatasync(fd);close(fd);}
printf("new file + 4K + fdatasync: %.0f/s\n",n/(now()-t0));return 0;}
