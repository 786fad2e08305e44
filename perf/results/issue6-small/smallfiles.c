#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int c,char**v){int n=atoi(v[2]);char p[4096],buf[4096];memset(buf,7,sizeof buf);
snprintf(p,sizeof p,"%s/s",v[1]);mkdir(p,0755);double t0=now();
for(int i=0;i<n;i++){snprintf(p,sizeof p,"%s/s/f%07d",v[1],i);int fd=open(p,O_CREAT|O_EXCL|O_WRONLY,0644);if(fd<0||write(fd,buf,4096)!=4096||close(fd)){perror(p);return 1;}}
printf("{\"files\": %d, \"create_write_close_per_s\": %.0f}\n",n,n/(now()-t0));return 0;}
